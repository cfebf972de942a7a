"""Timelines: a recording task decodes and segments recordings, fanning their segments out as
small tasks over every inference worker, by segment id, as they settle (service.recordings)."""

from ser_worker.service import recordings
from ser_worker.service.celery_app import app
from ser_worker.service.db.session import session_scope
from ser_worker.service.store import segments as timeline_store
from ser_worker.service.tasks import RETRY_OPTIONS


def segment_recordings(item_ids: list[int]) -> dict[str, int]:
    """Run by `ser.infer` for a timeline submission's items (it enqueues items alike)."""
    enqueued: list[int] = []

    def enqueue(batch: list[int]) -> None:
        predict_segments.apply_async(args=[batch])
        enqueued.extend(batch)

    for item_id in sorted(item_ids):
        recordings.segment_recording(item_id, enqueue)
    return {"recordings": len(item_ids), "segments": len(enqueued)}


@app.task(name="ser.predict_segments", **RETRY_OPTIONS)
def predict_segments(segment_ids: list[int]) -> dict[str, int]:
    with session_scope() as session:
        return recordings.predict_segments(session, segment_ids)


def holds_recordings(item_ids: list[int]) -> bool:
    with session_scope() as session:
        return timeline_store.holds_recordings(session, item_ids)
