"""`ser-cli submit --adapt` end to end: the real CLI, Redis, PostgreSQL and a prefork Celery worker
predicting with a real bundle that can adapt (per-submission adaptation, #14); and the same in
embedded mode, on SQLite in the CLI's own process."""

import json
import sqlite3
import subprocess

import pytest
from sqlalchemy import func, select

from ser_worker.bundle import read_manifest
from ser_worker.labels import EMOTIONS, RESULT_MODELS
from ser_worker.service.db.migrate import upgrade_database
from ser_worker.service.db.models import AdaptedPrediction, Prediction, SubmissionItem
from ser_worker.service.db.session import session_scope

from .conftest import CORPUS, register_bundle, run_cli
from .test_embedded import _embedded_env

pytestmark = pytest.mark.integration


def _json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_an_adapt_submission_is_predicted_together_by_one_task(
    service_env, start_worker, database_url, encoder_bundle
):
    assert read_manifest(encoder_bundle).encoder.adapted_head  # the fixture's bundle can adapt
    version = register_bundle(database_url, encoder_bundle)
    env = {**service_env, "SER_BATCH_SIZE": "4"}
    worker = start_worker("inference", 1, SER_BATCH_SIZE="4")
    clips = 24  # the committed RAVDESS clips of tests/corpus: one recording setup

    summary = _json(run_cli(env, "submit", str(CORPUS / "ravdess"), "--adapt", "--wait", "--json"))

    assert summary["status"] == {"done": clips} and summary["adapted"] is True
    assert summary["metrics"]["ensemble"]["n"] == clips
    assert worker.tasks_succeeded("ser.infer") == 1  # not clips / 4 batches: one task
    with session_scope(database_url) as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == 0
        adapted = session.scalar(select(func.count()).select_from(AdaptedPrediction))
        durations = session.scalars(select(SubmissionItem.duration_s)).all()
    assert adapted == clips * len(RESULT_MODELS)
    assert all(duration and duration > 0 for duration in durations)
    rows = _json(run_cli(env, "results", "--all-models", "--format", "json"))
    assert len(rows) == clips * len(RESULT_MODELS)
    for row in rows:
        assert row["status"] == "done" and row["adapted"] is True
        assert row["model_version"] == version and row["emotion"] in EMOTIONS
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    status = _json(run_cli(env, "status", "--json"))
    assert status["state"] == "finished" and status["adapted"] is True
    assert status["predicted"] == clips


def test_an_adapt_submission_in_embedded_mode(tmp_path, encoder_bundle):
    home = tmp_path / "home"
    home.mkdir()
    upgrade_database(f"sqlite:///{home / 'ser.db'}")
    register_bundle(f"sqlite:///{home / 'ser.db'}", encoder_bundle)
    env = _embedded_env(home)

    summary = _json(run_cli(env, "submit", str(CORPUS / "ravdess"), "--adapt", "--wait", "--json"))

    assert summary["status"] == {"done": 24} and summary["adapted"] is True
    with sqlite3.connect(home / "ser.db") as connection:
        counts = [
            connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("predictions", "adapted_predictions")
        ]
    assert counts == [0, 24 * len(RESULT_MODELS)]
    rows = _json(run_cli(env, "results", "--format", "json"))
    assert len(rows) == 24 and all(row["adapted"] and row["emotion"] in EMOTIONS for row in rows)
