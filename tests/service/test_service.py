"""The service end to end: the real `ser-cli`, Redis, PostgreSQL and prefork Celery workers."""

import json
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ser_worker.labels import EMOTIONS
from ser_worker.service.db.models import (
    AudioBlob,
    ModelVersion,
    Prediction,
    SubmissionItem,
    TrainingRun,
)
from ser_worker.service.db.session import session_scope

from .conftest import BIN, CORPUS, REPO, TEST_DATA, register_bundle, run_cli

pytestmark = pytest.mark.integration


def _json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_submit_wait_stores_every_prediction(
    service_env, start_worker, database_url, encoder_bundle
):
    version = register_bundle(database_url, encoder_bundle)
    worker = start_worker("inference", concurrency=2)

    summary = _json(run_cli(service_env, "submit", str(TEST_DATA), "--wait", "--json"))

    assert summary["status"] == {"done": 12}
    assert set(summary["metrics"]) == {"cnn1d", "cnn2d", "encoder", "ensemble"}
    rows = _json(
        run_cli(service_env, "results", summary["submission"], "--all-models", "--format", "json")
    )
    assert len(rows) == 12 * 4
    for row in rows:
        assert row["status"] == "done" and row["error"] is None
        assert row["model_version"] == version
        assert row["emotion"] in EMOTIONS
        assert set(row["probabilities"]) == set(EMOTIONS)
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert row["confidence"] == pytest.approx(max(row["probabilities"].values()), abs=1e-6)
        assert row["true_emotion"] in EMOTIONS  # the committed clips carry RAVDESS/TESS names
    with session_scope(database_url) as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == 48
    assert worker.tasks_succeeded("ser.infer") >= 1

    status = _json(run_cli(service_env, "status", summary["submission"], "--json"))
    assert status["state"] == "finished"
    ensemble = _json(
        run_cli(service_env, "results", "--model", "ensemble", "--limit", "5", "--format", "json")
    )
    assert len(ensemble) == 5 and {row["model"] for row in ensemble} == {"ensemble"}


def test_two_workers_share_a_queue_without_repeating_a_clip(
    service_env, start_worker, database_url, test_bundle
):
    register_bundle(database_url, test_bundle)
    clips = 72  # the committed training corpus: 4 RAVDESS actors and both TESS speakers
    env = {**service_env, "SER_BATCH_SIZE": "4"}
    workers = [start_worker("inference", 1, SER_BATCH_SIZE="4") for _ in range(2)]

    summary = _json(run_cli(env, "submit", str(CORPUS), "--wait", "--json", "--labels", "none"))

    assert summary["status"] == {"done": clips}
    batches = clips // 4
    per_worker = [worker.tasks_succeeded("ser.infer") for worker in workers]
    assert sum(per_worker) == batches, per_worker  # each batch ran exactly once
    assert all(count > 0 for count in per_worker), per_worker  # and both workers took work
    with session_scope(database_url) as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == clips * 3


def test_resubmission_reuses_stored_audio_and_predictions(
    service_env, start_worker, database_url, test_bundle
):
    register_bundle(database_url, test_bundle)
    start_worker("inference", 1)
    first = _json(run_cli(service_env, "submit", str(TEST_DATA), "--wait", "--json"))
    with session_scope(database_url) as session:
        created = {row.model: row.created_at for row in session.scalars(select(Prediction))}

    second = _json(run_cli(service_env, "submit", str(TEST_DATA), "--wait", "--json"))
    forced = _json(run_cli(service_env, "submit", str(TEST_DATA), "--wait", "--json", "--force"))

    assert first["submission"] != second["submission"] != forced["submission"]
    with session_scope(database_url) as session:
        assert session.scalar(select(func.count()).select_from(AudioBlob)) == 12
        assert session.scalar(select(func.count()).select_from(Prediction)) == 36
        newest = session.scalar(select(func.max(Prediction.created_at)))
    assert newest > max(created.values())  # --force recomputed and overwrote in place
    rows = _json(
        run_cli(service_env, "results", second["submission"], "--all-models", "--format", "json")
    )
    assert len(rows) == 36 and all(row["status"] == "done" for row in rows)


def test_training_job_registers_and_promotes_a_version(service_env, start_worker, database_url):
    data = CORPUS / "tess"  # both speakers, the six emotions, 4 clips each
    start_worker("training", 1)

    result = run_cli(
        service_env,
        "train",
        str(data),
        "--labels",
        "tess",
        "--split",
        "random",
        "--epochs",
        "2",
        "--wait",
    )

    assert result.returncode == 0, result.stderr
    with session_scope(database_url) as session:
        run = session.scalars(select(TrainingRun)).one()
        assert run.status == "succeeded" and run.promoted
        version = session.get(ModelVersion, run.model_version_id)
        assert version.active and version.source == "trained"
        # The training side holds every class, so the version gets the encoder's head too.
        assert set(version.manifest["metrics"]) == {"cnn1d", "cnn2d", "encoder", "ensemble"}
        assert version.manifest["encoder"]["head"] == "encoder_head.npz"
        assert version.manifest["split"]["protocol"] == "random"
        assert run.data_cutoff == session.scalar(select(func.max(SubmissionItem.id)))
    listing = _json(run_cli(service_env, "models", "--json"))
    assert [entry["active"] for entry in listing] == [True]

    # The same clips again: nothing new, so a scheduled retraining must skip.
    subprocess.run(
        [BIN / "celery", "-A", "ser_worker", "call", "ser.retrain"],
        cwd=REPO,
        env=service_env,
        check=True,
        capture_output=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with session_scope(database_url) as session:
            statuses = [
                run.status for run in session.scalars(select(TrainingRun).order_by(TrainingRun.id))
            ]
        if len(statuses) == 2:
            break
        time.sleep(0.5)
    assert statuses == ["succeeded", "skipped"]


def test_scheduled_retraining_skips_when_nothing_is_new(service_env, start_worker, database_url):
    from ser_worker.service.celery_app import TRAINING_QUEUE, app

    entry = app.conf.beat_schedule["retrain"]
    assert entry["task"] == "ser.retrain"
    assert app.conf.task_routes["ser.retrain"]["queue"] == TRAINING_QUEUE

    env = {**service_env, "SER_RETRAIN_EVERY_S": "1"}
    Path(env["SER_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    start_worker("training", 1, SER_RETRAIN_EVERY_S="1")
    beat = subprocess.Popen(
        [
            BIN / "celery",
            "-A",
            "ser_worker",
            "beat",
            "-l",
            "INFO",
            "-s",
            str(Path(env["SER_DATA_DIR"]) / "beat-schedule"),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        runs = []
        while time.monotonic() < deadline and len(runs) < 2:
            time.sleep(1)
            with session_scope(database_url) as session:
                runs = session.scalars(select(TrainingRun)).all()
    finally:
        beat.terminate()
        beat.wait(timeout=30)
    assert len(runs) >= 2, "beat did not send the retraining task"
    # The store holds no labelled clip, so every scheduled run must skip without training.
    assert {run.status for run in runs} == {"skipped"}
    assert all(run.trigger == "schedule" and run.model_version_id is None for run in runs)
