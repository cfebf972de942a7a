"""Queries and writes shared by the CLI and the tasks. SQL only through SQLAlchemy.

Nothing here imports TensorFlow or librosa: the CLI uses this module directly.
"""

import hashlib
import io
import uuid
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from ser_worker.labels import ENCODER, ENSEMBLE, RESULT_MODELS
from ser_worker.service.db.models import (
    AudioBlob,
    Evaluation,
    ModelVersion,
    Prediction,
    Submission,
    SubmissionItem,
    utcnow,
)

SHIPPED_BUNDLE = "default_bundle.zip"


class NoModelError(RuntimeError):
    """No model version is active and the package ships none."""


def upgrade_database(url: str | None = None) -> None:
    """``alembic upgrade head`` on the configured (or given) database."""
    from alembic import command
    from alembic.config import Config

    import migrations

    config = Config()
    config.set_main_option("script_location", migrations.__path__[0])
    if url:
        config.set_main_option("sqlalchemy.url", url)
    command.upgrade(config, "head")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _insert(session: Session, model: type):
    if session.get_bind().dialect.name == "postgresql":
        return postgresql_insert(model)
    return sqlite_insert(model)


def store_audio(session: Session, clips: Sequence[bytes]) -> list[str]:
    """Store each content once: bytes already in the store are not sent to the database again.

    Returns the sha256 of every clip, in order.
    """
    digests = [sha256_hex(data) for data in clips]
    known = set(session.scalars(select(AudioBlob.sha256).where(AudioBlob.sha256.in_(digests))))
    new = {digest: data for digest, data in zip(digests, clips, strict=True) if digest not in known}
    if new:
        rows = [{"sha256": d, "size_bytes": len(data), "data": data} for d, data in new.items()]
        # A concurrent submission may store the same clip between the query and the insert.
        session.execute(
            _insert(session, AudioBlob).on_conflict_do_nothing(index_elements=["sha256"]), rows
        )
    return digests


# --- model versions ----------------------------------------------------------------------------


def active_version(session: Session) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.active))


def shipped_bundle_bytes() -> bytes | None:
    resource = resources.files("ser_worker") / "data" / SHIPPED_BUNDLE
    return resource.read_bytes() if resource.is_file() else None


def register_version(
    session: Session, bundle: bytes, manifest: dict[str, Any], *, source: str, activate: bool
) -> ModelVersion:
    version = ModelVersion(
        version=manifest["version"],
        source=source,
        active=False,
        bundle_sha256=sha256_hex(bundle),
        bundle=bundle,
        manifest=manifest,
    )
    session.add(version)
    session.flush()
    if activate:
        activate_version(session, version)
    return version


def activate_version(session: Session, version: ModelVersion) -> None:
    session.execute(update(ModelVersion).where(ModelVersion.active).values(active=False))
    session.flush()
    version.active = True
    session.flush()


def promote_version(session: Session, version: ModelVersion) -> None:
    """Make ``version`` the active one, unless its bundle is damaged (BundleError).

    Checked before the active flag moves, so the version active now keeps serving.
    """
    check_bundle(version.bundle, version.bundle_sha256)
    activate_version(session, version)


def check_bundle(bundle: bytes | None, sha256: str) -> None:
    """Raise BundleError unless ``bundle`` is the intact zip that was registered under ``sha256``.

    Keras-free (the CLI promotes the shipped bundle): the checksum, each member's CRC, the
    manifest. Catches bytes damaged or lost in storage since registration.
    """
    from ser_worker.bundle import BundleError, read_manifest

    if not bundle:
        raise BundleError("the model bundle is missing (no bytes stored)")
    if sha256_hex(bundle) != sha256:
        raise BundleError("the model bundle is corrupt: its bytes no longer match their checksum")
    read_manifest(bundle)
    try:
        with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as error:
        raise BundleError(f"the model bundle is corrupt: {error}") from error
    if damaged is not None:
        raise BundleError(f"the model bundle is corrupt: {damaged} fails its CRC check")


def ensure_active_version(session: Session) -> ModelVersion:
    """The active version; on a fresh store, the bundle shipped in the package becomes it."""
    version = active_version(session)
    if version is not None:
        return version
    bundle = shipped_bundle_bytes()
    if bundle is None:
        raise NoModelError(
            "No model is available: this installation ships no default model and none has been "
            "trained. Train one with `ser-cli train PATH --wait` on labelled clips."
        )
    from ser_worker.bundle import read_manifest

    manifest = read_manifest(bundle)
    existing = session.scalar(
        select(ModelVersion).where(ModelVersion.version == manifest["version"])
    )
    if existing is None:
        existing = register_version(session, bundle, manifest, source="shipped", activate=False)
    promote_version(session, existing)
    return existing


def find_version(session: Session, version: str) -> ModelVersion | None:
    return session.scalar(select(ModelVersion).where(ModelVersion.version == version))


# --- submissions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipUpload:
    """One file as the CLI read it: its bytes, or why they could not be read."""

    filename: str
    data: bytes | None
    error_code: str | None = None
    error: str | None = None
    true_emotion: str | None = None
    speaker: str | None = None


def create_submission(
    session: Session,
    uploads: Sequence[ClipUpload],
    *,
    kind: str,
    label_scheme: str,
    model_version_id: int | None,
    force: bool = False,
) -> Submission:
    submission = Submission(
        id=uuid.uuid4().hex,
        kind=kind,
        label_scheme=label_scheme,
        model_version_id=model_version_id,
        force=force,
    )
    session.add(submission)
    digests = iter(store_audio(session, [u.data for u in uploads if u.data is not None]))
    for upload in uploads:
        common = {
            "filename": upload.filename,
            "true_emotion": upload.true_emotion,
            "speaker": upload.speaker,
        }
        if upload.data is None:
            item = SubmissionItem(
                status="failed",
                error_code=upload.error_code,
                error=upload.error,
                processed_at=utcnow(),
                **common,
            )
        else:
            item = SubmissionItem(sha256=next(digests), **common)
        submission.items.append(item)
    session.flush()
    return submission


def pending_item_batches(session: Session, submission_id: str, batch_size: int) -> list[list[int]]:
    ids = session.scalars(
        select(SubmissionItem.id)
        .where(SubmissionItem.submission_id == submission_id, SubmissionItem.status == "pending")
        .order_by(SubmissionItem.id)
    ).all()
    return [list(ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)]


def status_counts(session: Session, submission_id: str) -> Counter[str]:
    rows = session.execute(
        select(SubmissionItem.status, func.count())
        .where(SubmissionItem.submission_id == submission_id)
        .group_by(SubmissionItem.status)
    ).all()
    return Counter({status: count for status, count in rows})


def latest_submission_id(session: Session) -> str | None:
    return session.scalar(select(Submission.id).order_by(Submission.created_at.desc()).limit(1))


# --- predictions -------------------------------------------------------------------------------


def lock_audio(session: Session, sha256s: Iterable[str], model_version_id: int) -> None:
    """Hold these clips for this version until the transaction ends (PostgreSQL).

    A worker about to predict a clip that another worker is predicting for the same version
    waits, then finds its predictions stored and reuses them: each clip is computed once per
    version even when submissions overlap. Locks are taken in one global order, so two batches
    sharing clips cannot deadlock. SQLite has no such locks: there the unique key alone keeps
    one row per clip, version and model.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    for key in sorted({audio_lock_key(sha256) for sha256 in sha256s}):
        session.execute(select(func.pg_advisory_xact_lock(model_version_id, key)))


def audio_lock_key(sha256: str) -> int:
    """A clip's advisory lock key, next to its version's id: 32 bits of its content hash as a
    signed int4 (two clips that collide only wait for each other)."""
    return int(sha256[:8], 16) - 2**31


def existing_predictions(
    session: Session, sha256s: Iterable[str], model_version_id: int
) -> dict[str, dict[str, Prediction]]:
    found: dict[str, dict[str, Prediction]] = {}
    rows = session.scalars(
        select(Prediction).where(
            Prediction.sha256.in_(list(set(sha256s))),
            Prediction.model_version_id == model_version_id,
        )
    )
    for row in rows:
        found.setdefault(row.sha256, {})[row.model] = row
    return found


def save_predictions(session: Session, rows: Sequence[dict[str, Any]], *, overwrite: bool) -> None:
    """Insert prediction rows; the unique (audio, version, model) key makes a replay harmless."""
    if not rows:
        return
    statement = _insert(session, Prediction).values(list(rows))
    keys = ["sha256", "model_version_id", "model"]
    if overwrite:
        statement = statement.on_conflict_do_update(
            index_elements=keys,
            set_={
                "emotion": statement.excluded.emotion,
                "confidence": statement.excluded.confidence,
                "probabilities": statement.excluded.probabilities,
                "created_at": statement.excluded.created_at,
            },
        )
    else:
        statement = statement.on_conflict_do_nothing(index_elements=keys)
    session.execute(statement)


def result_rows(
    session: Session,
    submission_id: str,
    *,
    models: Sequence[str] = RESULT_MODELS,
    emotions: Sequence[str] = (),
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """One row per clip and model, the results JSON format of the README."""
    submission = session.get(Submission, submission_id)
    if submission is None:
        raise KeyError(submission_id)
    version = submission.model_version
    items = session.scalars(
        select(SubmissionItem)
        .where(SubmissionItem.submission_id == submission_id)
        .order_by(SubmissionItem.id)
    ).all()
    predictions = existing_predictions(
        session, [item.sha256 for item in items if item.sha256], submission.model_version_id or -1
    )
    # A version without the speech encoder (made before it, or trained on clips lacking a class)
    # predicts no "encoder" rows, not even empty ones for its failed clips.
    if version is not None and ENCODER not in version.manifest:
        models = [model for model in models if model != ENCODER]
    rows: list[dict[str, Any]] = []
    for item in items:
        for model in models:
            prediction = predictions.get(item.sha256 or "", {}).get(model)
            if item.status == "done" and prediction is None:
                continue
            if emotions and (prediction is None or prediction.emotion not in emotions):
                continue
            rows.append(
                {
                    "submission": submission_id,
                    "clip": item.filename,
                    "sha256": item.sha256,
                    "status": item.status,
                    "error": item.error,
                    "error_code": item.error_code,
                    "model": model,
                    "model_version": version.version if version else None,
                    "emotion": prediction.emotion if prediction and item.status == "done" else None,
                    "confidence": prediction.confidence if prediction else None,
                    "probabilities": prediction.probabilities if prediction else None,
                    "true_emotion": item.true_emotion,
                }
            )
            if limit is not None and len(rows) >= limit:
                return rows
    return rows


def labelled_outcomes(rows: Iterable[dict[str, Any]]) -> dict[str, tuple[list[str], list[str]]]:
    """Per model, the (true, predicted) emotion lists of done clips that carry a label."""
    outcomes: dict[str, tuple[list[str], list[str]]] = {}
    for row in rows:
        if row["status"] == "done" and row["true_emotion"] and row["emotion"]:
            true, predicted = outcomes.setdefault(row["model"], ([], []))
            true.append(row["true_emotion"])
            predicted.append(row["emotion"])
    return outcomes


def save_evaluation(session: Session, submission: Submission) -> Evaluation | None:
    """Store the metrics of a finished evaluation submission once; None while clips are pending."""
    if status_counts(session, submission.id).get("pending"):
        return None
    from ser_worker.evaluation.metrics import evaluate

    rows = result_rows(session, submission.id)
    outcomes = labelled_outcomes(rows)
    n_clips = sum(1 for row in rows if row["model"] == ENSEMBLE)
    labelled = len(outcomes.get(ENSEMBLE, ([], []))[0])
    statement = (
        _insert(session, Evaluation)
        .values(
            submission_id=submission.id,
            model_version_id=submission.model_version_id,
            n_clips=n_clips,
            skipped=n_clips - labelled,
            metrics={model: evaluate(*pair) for model, pair in outcomes.items()},
            created_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["submission_id"])
    )
    session.execute(statement)
    return session.scalar(select(Evaluation).where(Evaluation.submission_id == submission.id))
