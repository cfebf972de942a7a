"""Per-submission adaptation (`ser-cli submit --adapt`): the predictions of an adapt submission.

Its clips are predicted together, the speech encoder's vectors standardised by the statistics
of the whole submission, so each answer depends on the other clips: it belongs to the submission
and is keyed by (submission, audio, model) in `adapted_predictions`. The context-free
`predictions` table is neither read nor written for such a submission.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ser_worker.service.db.models import AdaptedPrediction, Submission, SubmissionItem
from ser_worker.service.store.sql import insert


def can_adapt(manifest: Mapping[str, Any] | None) -> bool:
    """Whether a version's bundle has an adapted head (its manifest's `encoder.adapted_head`),
    read from the manifest stored with the version: no bundle is loaded."""
    encoder = (manifest or {}).get("encoder") or {}
    return bool(encoder.get("adapted_head"))


def submission_adapted(session: Session, submission_id: str) -> bool:
    """Whether the submission was made with --adapt."""
    return bool(session.scalar(select(Submission.adapt).where(Submission.id == submission_id)))


def lock_pending_items(
    session: Session, submission_id: str, item_ids: Sequence[int]
) -> list[SubmissionItem]:
    """Hold the submission's row until the transaction ends (PostgreSQL; SQLite serialises
    writers anyway), then its items among `item_ids` that are still pending, as stored now.

    A second delivery of the same task (a redelivery, a `resume` while the first runs) waits
    for the first to commit, then finds nothing left to do: the whole submission is predicted
    once, together.
    """
    session.execute(select(Submission.id).where(Submission.id == submission_id).with_for_update())
    return list(
        session.scalars(
            select(SubmissionItem)
            .where(SubmissionItem.id.in_(list(item_ids)), SubmissionItem.status == "pending")
            .order_by(SubmissionItem.id)
            .execution_options(populate_existing=True)
        )
    )


def save_adapted_predictions(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert or replace the rows of a submission's clips: the unique (submission, audio, model)
    key keeps one row each however often the task runs."""
    if not rows:
        return
    statement = insert(session, AdaptedPrediction).values(list(rows))
    statement = statement.on_conflict_do_update(
        index_elements=["submission_id", "sha256", "model"],
        set_={
            column: getattr(statement.excluded, column)
            for column in (
                "model_version_id",
                "emotion",
                "confidence",
                "probabilities",
                "uncertain",
                "created_at",
            )
        },
    )
    session.execute(statement)


def adapted_predictions(
    session: Session, submission_id: str
) -> dict[str, dict[str, AdaptedPrediction]]:
    """The submission's adapted predictions: sha256 -> model -> row (the shape of
    `existing_predictions`, so the results read either alike)."""
    found: dict[str, dict[str, AdaptedPrediction]] = {}
    rows = session.scalars(
        select(AdaptedPrediction).where(AdaptedPrediction.submission_id == submission_id)
    )
    for row in rows:
        found.setdefault(row.sha256, {})[row.model] = row
    return found
