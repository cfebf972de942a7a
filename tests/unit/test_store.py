"""The store on SQLite, schema built by Alembic exactly as in production."""

import pkgutil
import subprocess
import sys

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

import cli
from ser_worker.bundle import read_manifest, shipped_bundle_bytes
from ser_worker.service import store
from ser_worker.service.db.migrate import upgrade_database
from ser_worker.service.db.models import AudioBlob, ModelVersion, Prediction
from ser_worker.service.db.session import session_scope
from ser_worker.service.store import versions


@pytest.fixture
def url(tmp_path):
    url = f"sqlite:///{tmp_path / 'ser.db'}"
    upgrade_database(url)
    return url


def _version(session, name: str, active: bool) -> ModelVersion:
    return store.register_version(
        session, name.encode(), {"version": name}, source="trained", activate=active
    )


def test_audio_is_stored_once_per_content(url):
    with session_scope(url) as session:
        first, again = store.store_audio(session, [b"RIFF same bytes", b"RIFF same bytes"])
        second, other = store.store_audio(session, [b"RIFF same bytes", b"RIFF other bytes"])
        assert first == again == second != other
        assert session.scalar(select(func.count()).select_from(AudioBlob)) == 2


def test_only_one_version_is_active(url):
    with session_scope(url) as session:
        old = _version(session, "v1", active=True)
        new = _version(session, "v2", active=True)
        assert store.active_version(session).id == new.id
        assert not old.active
    with pytest.raises(IntegrityError), session_scope(url) as session:
        session.get(ModelVersion, old.id).active = True  # bypassing activate_version
        session.flush()


def test_a_replayed_prediction_is_not_stored_twice(url):
    with session_scope(url) as session:
        version = _version(session, "v1", active=True)
        (sha,) = store.store_audio(session, [b"clip"])
        row = {
            "sha256": sha,
            "model_version_id": version.id,
            "model": "cnn1d",
            "emotion": "ANG",
            "confidence": 0.9,
            "probabilities": {"ANG": 0.9, "SAD": 0.1},
        }
        store.save_predictions(session, [row], overwrite=False)
        store.save_predictions(session, [{**row, "emotion": "SAD"}], overwrite=False)
        assert session.scalars(select(Prediction.emotion)).all() == ["ANG"]
        store.save_predictions(session, [{**row, "emotion": "SAD"}], overwrite=True)
        assert session.scalars(select(Prediction.emotion)).all() == ["SAD"]


def test_without_a_shipped_model_the_user_is_told_to_train(url, monkeypatch):
    monkeypatch.setattr(versions, "shipped_bundle_bytes", lambda: None)
    with session_scope(url) as session, pytest.raises(store.NoModelError, match="ser-cli train"):
        store.ensure_active_version(session)


def test_failed_uploads_keep_their_error(url):
    uploads = [
        store.ClipUpload("a.wav", b"bytes", true_emotion="ANG"),
        store.ClipUpload("b.wav", None, error_code="unreadable", error="cannot read file"),
    ]
    with session_scope(url) as session:
        version = _version(session, "v1", active=True)
        submission = store.create_submission(
            session, uploads, kind="predict", label_scheme="auto", model_version_id=version.id
        )
        assert store.status_counts(session, submission.id) == {"pending": 1, "failed": 1}
        assert store.pending_item_batches(session, submission.id, 16) == [[submission.items[0].id]]
        rows = store.result_rows(session, submission.id)
    failed = [row for row in rows if row["status"] == "failed"]
    assert {row["model"] for row in failed} == {"cnn1d", "cnn2d", "ensemble"}
    assert all(row["error"] == "cannot read file" and row["emotion"] is None for row in failed)


def test_the_shipped_bundle_becomes_the_active_version_once(url):
    with session_scope(url) as session:
        first = store.ensure_active_version(session)
    with session_scope(url) as session:
        assert store.ensure_active_version(session).id == first.id
        assert session.scalar(select(func.count()).select_from(ModelVersion)) == 1
    assert first.source == "shipped" and first.version == read_manifest(first.bundle).version


def test_losing_the_first_run_race_takes_the_winners_version(url, monkeypatch):
    """Two processes find the store empty at once; the second to register the shipped bundle
    hits the unique version, rolls back its savepoint only and uses the winner's row."""
    bundle = shipped_bundle_bytes()
    with session_scope(url) as session:  # the winner, committed between our checks and insert
        winner = store.register_version(
            session, bundle, read_manifest(bundle), source="shipped", activate=False
        )
    real_find = versions.find_version
    calls = []

    def find_nothing_first(session, name):
        calls.append(name)
        return None if len(calls) == 1 else real_find(session, name)

    monkeypatch.setattr(versions, "find_version", find_nothing_first)
    with session_scope(url) as session:
        version = store.ensure_active_version(session)
        uploads = [store.ClipUpload("a.wav", b"bytes")]
        # The transaction goes on after the rolled-back savepoint.
        store.create_submission(
            session, uploads, kind="predict", label_scheme="auto", model_version_id=version.id
        )
    assert len(calls) == 2 and version.id == winner.id
    with session_scope(url) as session:
        assert store.active_version(session).id == winner.id
        assert session.scalar(select(func.count()).select_from(ModelVersion)) == 1


def test_cli_and_celery_app_do_not_import_tensorflow_or_librosa():
    modules = [f"cli.{module.name}" for module in pkgutil.iter_modules(cli.__path__)]
    assert "cli.main" in modules and "cli.render" in modules
    imports = ", ".join([*modules, "ser_worker", "ser_worker.service.celery_app"])
    code = (
        f"import sys, {imports}, ser_worker.service.tasks; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'librosa') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
