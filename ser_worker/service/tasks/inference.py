"""Inference: one batch of stored clips predicted in one transaction (see service.pipeline)."""

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from ser_worker.service import adaptation, pipeline, store
from ser_worker.service.celery_app import app
from ser_worker.service.db.models import Submission, SubmissionItem
from ser_worker.service.db.session import session_scope
from ser_worker.service.tasks import RETRY_OPTIONS, timeline


@app.task(name="ser.infer", **RETRY_OPTIONS)
def infer(item_ids: list[int]) -> dict[str, int]:
    if timeline.holds_recordings(item_ids):  # a timeline's items are recordings to segment
        return timeline.segment_recordings(item_ids)
    with session_scope() as session:
        items = session.scalars(
            select(SubmissionItem)
            .where(SubmissionItem.id.in_(item_ids))
            .options(selectinload(SubmissionItem.submission))
        ).all()
        if not items:
            return {"done": 0, "failed": 0, "computed": 0}
        submission = items[0].submission
        # Items already processed (a redelivered or resumed batch) are skipped, but the
        # evaluation step below still runs: the first delivery may have died just before it.
        pending = [item for item in items if item.status == "pending"]
        # An --adapt submission's clips are predicted together, the others batch by batch.
        predict = adaptation.predict_adapted if submission.adapt else pipeline.predict_items
        outcome = predict(session, submission, pending)
    if submission.kind == "evaluate":
        with session_scope() as session:
            store.save_evaluation(session, session.get(Submission, submission.id))
    return outcome
