"""Per-submission adaptation (#14, `submit --adapt`) on an embedded SQLite store through the real
CLI: the migration, the one task holding every clip, the adapted rows and what every read shows
of them, the refusals and failures, and the Python API. A stand-in bundle answers for the model
(it records how it was called); the clips are the committed RAVDESS ones, really decoded."""

import csv
import io
import json
import os
import shutil
import types
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from click.testing import CliRunner

from cli.main import cli
from ser_worker.bundle.records import MemberPrediction, PreparedClip
from ser_worker.config import get_settings
from ser_worker.labels import EMOTIONS, RESULT_MODELS
from ser_worker.models.encoder.head import MIN_ADAPT_CLIPS
from ser_worker.service import runtime, store
from ser_worker.service.db.migrate import upgrade_database
from ser_worker.service.db.models import (
    AdaptedPrediction,
    AudioBlob,
    Prediction,
    Submission,
    SubmissionItem,
)
from ser_worker.service.db.session import get_engine, session_scope
from ser_worker.service.tasks.inference import infer
from tests.unit.test_uncertain import alembic_config

RAVDESS = Path(__file__).resolve().parents[1] / "corpus" / "ravdess"  # 4 actors x 6 = 24 clips
ENCODER = {"head": "encoder_head.npz", "adapted_head": "encoder_head_adapted.npz"}
ADAPTING = {"version": "v-adapt", "models": {"cnn1d": {}, "cnn2d": {}}, "encoder": ENCODER}
PLAIN = {**ADAPTING, "version": "v-plain", "encoder": {"head": "encoder_head.npz"}}


class StandIn:
    """Answers as a bundle would, each clip's answer depending on its place in the call (as an
    adapted one depends on the others); records every call."""

    def __init__(self, can_adapt: bool = True):
        self.can_adapt, self.version, self.calls = can_adapt, "v-adapt", []

    def prepare(self, y, sampling_rate, limits=None):
        return PreparedClip(cnn=y, encoder=y, duration_s=len(y) / sampling_rate)

    def predict_prepared(self, clips, *, batch_size=64, adapt=False):
        self.calls.append((len(clips), adapt))
        answers = []
        for i, _ in enumerate(clips):
            p = np.full(len(EMOTIONS), 0.02)
            p[i % len(EMOTIONS)] = 0.9 if i % 2 else 0.06  # every other one uncertain
            answers.append({m: MemberPrediction.from_probabilities(p) for m in RESULT_MODELS})
        return answers


@pytest.fixture
def env(tmp_path, monkeypatch):
    """An embedded store whose active version can adapt; tasks run in process as embedded mode
    runs them, each enqueued batch recorded first."""
    for key in [key for key in os.environ if key.startswith("SER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SER_BATCH_SIZE", "4")
    get_settings.cache_clear()
    get_engine.cache_clear()
    upgrade_database()
    bundle = StandIn()
    with session_scope() as session:
        store.register_version(session, b"p", PLAIN, source="trained", activate=False)
        store.register_version(session, b"a", ADAPTING, source="trained", activate=True)
    monkeypatch.setattr(runtime, "bundle_for", lambda session, version_id: bundle)
    batches: list[list[int]] = []

    def enqueue(args, **_):
        batches.append(list(args[0]))
        infer(args[0])

    monkeypatch.setattr(infer, "apply_async", enqueue)
    yield types.SimpleNamespace(bundle=bundle, batches=batches, tmp=tmp_path)
    get_settings.cache_clear()
    get_engine.cache_clear()


def run(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def ok(*args):
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def count(table) -> int:
    with session_scope() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(table))


def clips(tmp: Path, junk: int = 0) -> Path:
    """The 24 RAVDESS clips in a folder of their own, the first `junk` of them not audio."""
    folder = tmp / "clips"
    shutil.copytree(RAVDESS, folder)
    for path in sorted(folder.rglob("*.flac"))[:junk]:
        path.write_bytes(b"this is not audio " + path.name.encode())
    return folder


# --- the migration ------------------------------------------------------------------------------


def check_adapt_migration(url: str) -> None:
    """From revision 0004: old submissions read adapt=false, the column is NOT NULL, and
    adapted_predictions keeps one row per (submission, clip, model). Shared with the PostgreSQL
    test in tests/service/test_migrations.py."""
    command.upgrade(alembic_config(url), "0004")
    engine = sa.create_engine(url)
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO submissions (id, kind, label_scheme, force, created_at) "
                "VALUES (:id, 'predict', 'none', false, :now)"
            ),
            {"id": "s" * 32, "now": now},
        )
    command.upgrade(alembic_config(url), "head")
    row = {"s": "s" * 32, "a": "a" * 64, "now": now}
    insert_row = sa.text(
        "INSERT INTO adapted_predictions (submission_id, sha256, model_version_id, model, "
        "emotion, confidence, probabilities, created_at) "
        "VALUES (:s, :a, 1, 'ensemble', 'SAD', 0.4, '{}', :now)"
    )
    with engine.begin() as connection:
        assert connection.scalar(sa.text("SELECT adapt FROM submissions")) in (False, 0)
        connection.execute(
            sa.text(
                "INSERT INTO audio_blobs (sha256, size_bytes, data, created_at) "
                "VALUES (:a, 1, :data, :now)"
            ),
            {**row, "data": b"x"},
        )
        connection.execute(
            sa.text(
                "INSERT INTO model_versions (id, version, source, active, created_at, "
                "bundle_sha256, bundle, manifest) "
                "VALUES (1, 'v', 'trained', false, :now, 'b', :data, '{}')"
            ),
            {**row, "data": b"b"},
        )
        connection.execute(insert_row, row)
        assert not connection.scalar(sa.text("SELECT uncertain FROM adapted_predictions"))
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
        connection.execute(insert_row, row)  # the same submission, clip and model again
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
        connection.execute(sa.text("UPDATE submissions SET adapt = NULL"))
    engine.dispose()
    command.downgrade(alembic_config(url), "0004")
    command.upgrade(alembic_config(url), "head")


def test_the_migration_adds_adapt_and_adapted_predictions(tmp_path):
    check_adapt_migration(f"sqlite:///{tmp_path / 'ser.db'}")


# --- submit --adapt -----------------------------------------------------------------------------


def test_an_adapt_submission_is_one_task_and_its_rows_are_its_own(env):
    with session_scope() as session:  # a context-free prediction of one clip, stored earlier
        sha = store.store_audio(session, [next(RAVDESS.rglob("*.flac")).read_bytes()])[0]
        row = {"sha256": sha, "model_version_id": store.active_version(session).id}
        row |= {"model": "ensemble", "emotion": "FEA", "confidence": 0.99, "probabilities": {}}
        store.save_predictions(session, [row], overwrite=False)

    summary = json.loads(ok("submit", RAVDESS, "--adapt", "--wait", "--json").stdout)

    assert [len(batch) for batch in env.batches] == [24]  # SER_BATCH_SIZE=4: still one task
    assert env.bundle.calls == [(24, True)]  # one adapted call with every clip
    assert summary["status"] == {"done": 24} and summary["adapted"] is True
    assert summary["metrics"]["ensemble"]["n"] == 24  # RAVDESS names carry labels
    assert (summary["predicted"], summary["uncertain"]) == (24, 12)
    assert count(AdaptedPrediction) == 24 * 4 and count(Prediction) == 1  # never written
    rows = json.loads(ok("results", "--all-models", "--format", "json").stdout)
    assert len(rows) == 24 * 4 and all(row["adapted"] is True for row in rows)
    first = next(r for r in rows if r["sha256"] == sha and r["model"] == "ensemble")
    assert first["emotion"] != "FEA"  # the context-free row is not reused
    table = list(csv.DictReader(io.StringIO(ok("results", "--format", "csv").stdout)))
    assert {row["adapted"] for row in table} == {"true"} and len(table) == 24
    assert "each prediction depends on the other clips" in ok("results").stderr
    status = json.loads(ok("status", "--json").stdout)
    assert status["adapted"] is True and status["predicted"] == 24
    assert "adapted to its own clips (--adapt)" in ok("status").stdout
    (listed,) = json.loads(ok("submissions", "--json").stdout)
    assert listed["adapted"] is True
    assert "adapted" in ok("submissions").stdout.splitlines()[0]


def test_a_plain_submission_says_it_was_not_adapted(env):
    ok("submit", RAVDESS / "Actor_07", "--wait")

    assert env.bundle.calls == [(4, False), (2, False)]
    assert {row["adapted"] for row in json.loads(ok("results", "--format", "json").stdout)} == {
        False
    }
    assert json.loads(ok("status", "--json").stdout)["adapted"] is False
    assert "adapted" not in ok("status").stdout + ok("submissions").stdout


def test_a_second_delivery_changes_nothing(env):
    ok("submit", RAVDESS, "--adapt")
    (batch,) = env.batches
    with session_scope() as session:
        before = sorted(session.execute(sa.select(AdaptedPrediction.id, AdaptedPrediction.model)))

    infer(batch)  # redelivered: every clip is done already
    assert env.bundle.calls == [(24, True)]
    with session_scope() as session:  # computed again from scratch: replaced, not duplicated
        for item in session.scalars(sa.select(SubmissionItem)):
            item.status = "pending"
    infer(batch)

    assert env.bundle.calls == [(24, True), (24, True)]
    with session_scope() as session:
        after = sorted(session.execute(sa.select(AdaptedPrediction.id, AdaptedPrediction.model)))
        statuses = set(session.scalars(sa.select(SubmissionItem.status)))
    assert after == before and statuses == {"done"}


def test_resume_queues_an_adapt_submission_as_one_task(env, monkeypatch):
    monkeypatch.setattr(infer, "apply_async", lambda args, **_: env.batches.append(args[0]))
    ok("submit", RAVDESS, "--adapt")
    env.batches.clear()

    ok("resume")

    assert [len(batch) for batch in env.batches] == [24]


# --- what fails, and how ------------------------------------------------------------------------


def test_too_few_usable_clips_fail_with_too_few_to_adapt(env):
    folder = clips(env.tmp, junk=24 - MIN_ADAPT_CLIPS + 1)  # 19 usable

    summary = json.loads(ok("submit", folder, "--adapt", "--wait", "--json").stdout)

    assert summary["status"] == {"failed": 24}  # finished: nothing left pending
    codes = [failure["error_code"] for failure in summary["failed"]]
    assert codes.count("too_few_to_adapt") == MIN_ADAPT_CLIPS - 1 and "not_audio" in codes
    message = next(f["error"] for f in summary["failed"] if f["error_code"] == "too_few_to_adapt")
    assert f"at least {MIN_ADAPT_CLIPS} usable clips" in message and "has 19" in message
    assert env.bundle.calls == [] and count(AdaptedPrediction) == 0


def test_a_bundle_that_cannot_adapt_fails_every_usable_clip(env):
    env.bundle.can_adapt = False  # the manifest said it could: the bundle has the last word
    folder = clips(env.tmp, junk=1)

    summary = json.loads(ok("submit", folder, "--adapt", "--wait", "--json").stdout)

    codes = sorted({failure["error_code"] for failure in summary["failed"]})
    assert summary["status"] == {"failed": 24} and codes == ["cannot_adapt", "not_audio"]
    assert "cannot adapt" in summary["failed"][-1]["error"]
    assert env.bundle.calls == [] and count(AdaptedPrediction) == 0


@pytest.mark.parametrize(
    "args, active, message",
    [
        ((RAVDESS / "Actor_07", RAVDESS / "Actor_08", RAVDESS / "Actor_09"), None, "found 18"),
        ((RAVDESS,), "v-plain", "model version v-plain cannot adapt"),
        ((RAVDESS, "--timeline"), None, "--adapt and --timeline"),
    ],
    ids=["too-few-files", "version-cannot-adapt", "timeline"],
)
def test_submit_refuses_before_storing_anything(env, args, active, message):
    if active is not None:
        with session_scope() as session:
            store.activate_version(session, store.find_version(session, active))

    result = run("submit", *args, "--adapt")

    assert result.exit_code != 0
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert message in error
    assert count(Submission) == count(AudioBlob) == 0 and env.batches == []


# --- the Python API -----------------------------------------------------------------------------


def recognizer(bundle):
    from ser_worker.api import Recognizer
    from ser_worker.audio import AudioLimits

    rec = object.__new__(Recognizer)  # no bundle loaded: the stand-in answers
    rec.bundle, rec.limits = bundle, AudioLimits.from_settings()
    return rec


def test_the_api_predicts_every_usable_file_in_one_adapted_call(tmp_path):
    paths = sorted(clips(tmp_path, junk=1).rglob("*.flac"))
    bundle = StandIn()

    predictions = recognizer(bundle).predict_files(paths, batch_size=4, adapt=True)

    assert bundle.calls == [(23, True)]
    assert predictions[0].error_code == "not_audio" and all(p.ok for p in predictions[1:])
    assert [p.path for p in predictions] == [str(p) for p in paths]


def test_the_api_refuses_what_it_cannot_adapt(tmp_path):
    paths = sorted(clips(tmp_path, junk=24 - MIN_ADAPT_CLIPS + 1).rglob("*.flac"))

    with pytest.raises(ValueError, match=f"at least {MIN_ADAPT_CLIPS} clips.*19 of 24 files"):
        recognizer(StandIn()).predict_files(paths, adapt=True)
    with pytest.raises(ValueError, match="no adapted head"):
        recognizer(StandIn(can_adapt=False)).predict_files(paths, adapt=True)
    with pytest.raises(ValueError, match="got 3"):
        recognizer(StandIn()).predict_files(paths[:3], adapt=True)
