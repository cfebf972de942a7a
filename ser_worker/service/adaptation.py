"""Per-submission adaptation (`ser-cli submit --adapt`) in the worker: a submission's clips
predicted together, the speech encoder's vectors standardised by their own statistics.

Every clip of such a submission arrives in one task (store.pending_item_batches), because each
answer depends on all the others: the usable clips go through one
``Bundle.predict_prepared(..., adapt=True)`` call, and the rows land in `adapted_predictions`
with the items' outcomes, in one transaction. Context-free predictions are neither reused nor
written. A bad clip still fails alone, with its own code; when too few clips are usable, or the
version cannot adapt, the usable ones fail with `too_few_to_adapt` or `cannot_adapt`, and the
submission still completes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from ser_worker.service import store
from ser_worker.service.db.models import Submission, SubmissionItem
from ser_worker.service.pipeline import (
    Failure,
    bundle_and_clips,
    decode_blobs,
    prediction_rows,
    record_outcomes,
)

if TYPE_CHECKING:
    from ser_worker.bundle import Bundle, PreparedClip


def predict_adapted(
    session: Session, submission: Submission, items: list[SubmissionItem]
) -> dict[str, int]:
    """Predict an adapt submission's pending items together and record each outcome; the
    counts. A second delivery waits for the first (the submission's row is held) and then finds
    nothing pending."""
    from ser_worker.service import runtime

    items = store.lock_pending_items(session, submission.id, [item.id for item in items])
    if not items:
        return {"done": 0, "failed": 0, "computed": 0}
    version_id = submission.model_version_id
    limits = runtime.audio_limits()
    decoded, failures = decode_blobs(store.audio_data(session, {i.sha256 for i in items}), limits)
    bundle, prepared = bundle_and_clips(session, submission, decoded, failures, limits)
    if bundle is not None:
        refusal = adapt_refusal(bundle, len(prepared))
        if refusal is not None:
            failures.update(dict.fromkeys(prepared, refusal))
            prepared = {}
        rows = adapted_rows(submission.id, version_id, prepared, bundle)
        store.save_adapted_predictions(session, rows)
    return {**record_outcomes(items, prepared, failures), "computed": len(prepared)}


def adapt_refusal(bundle: Bundle, usable: int) -> Failure | None:
    """Why `usable` clips cannot be adapted to with this bundle (bundle.core's rule, worded for
    a submission), or None when they can."""
    from ser_worker.bundle.core import CANNOT_ADAPT, TOO_FEW_TO_ADAPT, adaptation_refusal
    from ser_worker.models.encoder.head import MIN_ADAPT_CLIPS

    refusal = adaptation_refusal(bundle, usable)
    if refusal == CANNOT_ADAPT:
        return (
            CANNOT_ADAPT,
            f"model version {bundle.version} cannot adapt to a submission (its bundle has no "
            "adapted head); submit again without --adapt",
        )
    if refusal == TOO_FEW_TO_ADAPT:
        return (
            TOO_FEW_TO_ADAPT,
            f"per-submission adaptation needs at least {MIN_ADAPT_CLIPS} usable clips; this "
            f"submission has {usable}; submit them again without --adapt, or with more clips "
            "from the same recording setup",
        )
    return None


def adapted_rows(
    submission_id: str, version_id: int, prepared: Mapping[str, PreparedClip], bundle: Bundle
) -> list[dict[str, Any]]:
    """One row per clip and model (every member and the ensemble), all the clips predicted in
    one adapted call: the encoder's vectors standardised by the statistics of all of them."""
    return prediction_rows(version_id, prepared, bundle, adapt=True, submission_id=submission_id)
