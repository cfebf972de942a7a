"""Predictions, keyed by (audio, model version, model): each clip is computed once per version,
and a replayed task finds its rows already there. An adapt submission's are its own
(store.adapted); the reads here take them from there for such a submission."""

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from ser_worker.bundle.manifest import Calibration
from ser_worker.labels import ENCODER, ENSEMBLE, MODEL_NAMES, RESULT_MODELS
from ser_worker.service.db.models import AdaptedPrediction, Prediction, Submission, SubmissionItem
from ser_worker.service.store.adapted import adapted_predictions
from ser_worker.service.store.sql import insert, is_postgresql
from ser_worker.service.store.training_data import TrainingClips


def lock_audio(session: Session, sha256s: Iterable[str], model_version_id: int) -> None:
    """Hold these clips for this version until the transaction ends (PostgreSQL).

    A worker about to predict a clip that another worker is predicting for the same version
    waits, then finds its predictions stored and reuses them: each clip is computed once per
    version even when submissions overlap. Locks are taken in one global order, so two batches
    sharing clips cannot deadlock. SQLite has no such locks: there the unique key alone keeps
    one row per clip, version and model.
    """
    if not is_postgresql(session):
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
    statement = insert(session, Prediction).values(list(rows))
    keys = ["sha256", "model_version_id", "model"]
    if overwrite:
        statement = statement.on_conflict_do_update(
            index_elements=keys,
            set_={
                "emotion": statement.excluded.emotion,
                "confidence": statement.excluded.confidence,
                "probabilities": statement.excluded.probabilities,
                "uncertain": statement.excluded.uncertain,
                "created_at": statement.excluded.created_at,
            },
        )
    else:
        statement = statement.on_conflict_do_nothing(index_elements=keys)
    session.execute(statement)


def version_models(manifest: Mapping[str, Any]) -> tuple[str, ...]:
    """The result models a version predicts: its CNNs, the speech encoder when it has one
    (versions made before it, or trained on clips lacking a class, have none), the ensemble."""
    cnns = manifest.get("models")
    present = set(MODEL_NAMES if cnns is None else cnns) | {ENSEMBLE}
    if ENCODER in manifest:
        present.add(ENCODER)
    return tuple(model for model in RESULT_MODELS if model in present)


def uncertain_below(manifest: Mapping[str, Any] | None) -> float:
    """A version's threshold: a prediction whose best class holds less is stored uncertain
    (0.5 for a bundle without a calibration record)."""
    recorded = (manifest or {}).get("calibration") or {}
    return Calibration.model_validate(recorded).uncertain_below


def uncertain_counts(session: Session, submission_id: str) -> dict[str, Any]:
    """How many of a submission's done clips the ensemble predicted (`predicted`), how many of
    those are uncertain, and the threshold of the version that predicted them."""
    submission = session.get(Submission, submission_id)
    if submission is None:
        raise KeyError(submission_id)
    version = submission.model_version
    if submission.adapt:
        table, own = AdaptedPrediction, AdaptedPrediction.submission_id == submission_id
    else:
        table, own = Prediction, Prediction.model_version_id == submission.model_version_id
    predicted, uncertain = session.execute(
        select(func.count(), func.sum(case((table.uncertain, 1), else_=0)))
        .select_from(SubmissionItem)
        .join(
            table,
            (table.sha256 == SubmissionItem.sha256) & own & (table.model == ENSEMBLE),
        )
        .where(SubmissionItem.submission_id == submission_id, SubmissionItem.status == "done")
    ).one()
    return {
        "predicted": predicted,
        "uncertain": uncertain or 0,
        "uncertain_below": uncertain_below(version.manifest if version is not None else None),
    }


def submission_models(session: Session, submission_id: str) -> tuple[str | None, tuple[str, ...]]:
    """(version name, the result models it predicts) of a submission's model version."""
    submission = session.get(Submission, submission_id)
    if submission is None:
        raise KeyError(submission_id)
    version = submission.model_version
    if version is None:
        return None, RESULT_MODELS
    return version.version, version_models(version.manifest)


def result_rows(
    session: Session,
    submission_id: str,
    *,
    models: Sequence[str] = RESULT_MODELS,
    emotions: Sequence[str] = (),
    min_confidence: float | None = None,
    uncertain: bool | None = None,
    sort: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """One row per clip and model, the results JSON format of the README.

    A pending or failed clip has a row per model too, without a prediction; the emotion,
    confidence and `uncertain` filters (True: only uncertain predictions; False: only the
    others) keep only rows that have one. Sorting by confidence puts the most
    confident first; by emotion, the most confident of each emotion first. An adapt
    submission's rows come from its own adapted predictions (`adapted` true), in the same shape.
    """
    submission = session.get(Submission, submission_id)
    if submission is None:
        raise KeyError(submission_id)
    version = submission.model_version
    items = session.scalars(
        select(SubmissionItem)
        .where(SubmissionItem.submission_id == submission_id)
        .order_by(SubmissionItem.id)
    ).all()
    predictions = (
        adapted_predictions(session, submission_id)
        if submission.adapt
        else existing_predictions(
            session,
            [item.sha256 for item in items if item.sha256],
            submission.model_version_id or -1,
        )
    )
    if version is not None:
        available = version_models(version.manifest)
        models = [model for model in models if model in available]
    seen = TrainingClips(version.manifest if version is not None else None)
    rows: list[dict[str, Any]] = []
    for item in items:
        in_training = (item.filename, item.sha256) in seen
        for model in models:
            prediction = predictions.get(item.sha256 or "", {}).get(model)
            if item.status == "done" and prediction is None:
                continue
            row = _result_row(submission, item, model, version, prediction, in_training)
            if _wanted(row, emotions, min_confidence, uncertain):
                rows.append(row)
    if sort is not None:
        rows.sort(key=_SORTS[sort])
    return rows[:limit] if limit is not None else rows


def _wanted(
    row: dict[str, Any],
    emotions: Sequence[str],
    min_confidence: float | None,
    uncertain: bool | None,
) -> bool:
    if emotions and row["emotion"] not in emotions:
        return False
    if (min_confidence is not None or uncertain is not None) and row["emotion"] is None:
        return False
    if min_confidence is not None and row["confidence"] < min_confidence:
        return False
    return uncertain is None or row["uncertain"] == uncertain


def _confidence_first(row: dict[str, Any]) -> float:
    # Rows without a prediction (failed, pending) sort last.
    return -row["confidence"] if row["emotion"] is not None else 1.0


_SORTS = {
    "confidence": _confidence_first,
    "clip": lambda row: (row["clip"], RESULT_MODELS.index(row["model"])),
    "emotion": lambda row: (row["emotion"] or "~", _confidence_first(row)),
}
# How `result_rows` can order its rows; submission order (the order files were found) otherwise.
SORT_KEYS: tuple[str, ...] = tuple(_SORTS)


def _result_row(submission, item, model, version, prediction, in_training) -> dict[str, Any]:
    done = prediction is not None and item.status == "done"
    return {
        "submission": submission.id,
        "clip": item.filename,
        "sha256": item.sha256,
        "status": item.status,
        "error": item.error,
        "error_code": item.error_code,
        "model": model,
        "model_version": version.version if version else None,
        "emotion": prediction.emotion if done else None,
        "confidence": prediction.confidence if done else None,
        "probabilities": prediction.probabilities if done else None,
        "uncertain": prediction.uncertain if done else None,
        "true_emotion": item.true_emotion,
        "seen_in_training": in_training,
        # Predicted with the submission's other clips (--adapt): the answer depends on them.
        "adapted": submission.adapt,
    }
