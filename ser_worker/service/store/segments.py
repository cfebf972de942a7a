"""Recordings and their speech segments: what the timeline tasks write and `ser-cli timeline`
and `ser-cli results` read. A segment is claimed, predicted and marked done in one transaction,
and its predictions are keyed by (segment, model): each segment ends done exactly once however
often its task is delivered."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, undefer

from ser_worker.labels import EMOTIONS, ENSEMBLE, RESULT_MODELS
from ser_worker.service.db.models import (
    Recording,
    RecordingChunk,
    SegmentPrediction,
    SpeechSegment,
    Submission,
    SubmissionItem,
    utcnow,
)
from ser_worker.service.store.predictions import version_models
from ser_worker.service.store.sql import insert, is_postgresql

if TYPE_CHECKING:
    from ser_worker.segments import Segment

# The submission kind whose items are recordings.
TIMELINE = "timeline"
NO_SPEECH = "no speech found: the recording has no speech segments"


def holds_recordings(session: Session, item_ids: Sequence[int]) -> bool:
    kind = session.scalar(
        select(Submission.kind)
        .join(SubmissionItem, SubmissionItem.submission_id == Submission.id)
        .where(SubmissionItem.id.in_(list(item_ids)))
        .limit(1)
    )
    return kind == TIMELINE


def locked_item(session: Session, item_id: int) -> SubmissionItem | None:
    """The item, locked until the transaction ends (PostgreSQL): one writer per recording."""
    return session.scalar(
        select(SubmissionItem).where(SubmissionItem.id == item_id).with_for_update()
    )


def is_segmented(session: Session, item_id: int) -> bool:
    return session.get(Recording, item_id) is not None


def save_chunk(session: Session, item_id: int, index: int, flac: bytes) -> None:
    # Core insert: a chunk is not kept in the session after it was sent; a redelivered task's
    # chunks are the ones stored already.
    statement = insert(session, RecordingChunk).values(item_id=item_id, index=index, flac=flac)
    session.execute(statement.on_conflict_do_nothing(index_elements=["item_id", "index"]))


def save_recording(
    session: Session,
    item: SubmissionItem,
    segments: Sequence[Any],
    *,
    duration_s: float,
    chunk_s: float,
    stored_bytes: int,
) -> None:
    """The recording decoded and segmented (its segments stored already), or done with none."""
    session.add(
        Recording(
            item_id=item.id,
            duration_s=duration_s,
            speech_s=sum(s.end_s - s.start_s for s in segments),
            n_segments=len(segments),
            chunk_s=chunk_s,
            stored_bytes=stored_bytes,
        )
    )
    item.duration_s = duration_s
    if not segments:
        item.status, item.error, item.processed_at = "done", NO_SPEECH, utcnow()


def save_segments(
    session: Session, item_id: int, segments: Sequence[Segment], *, first_index: int
) -> None:
    """Pending segments numbered from `first_index`; those a previous delivery stored stay."""
    if segments:
        rows = [
            {
                "item_id": item_id,
                "index": first_index + i,
                "start_s": s.start_s,
                "end_s": s.end_s,
                "context_start_s": s.read_span[0],
                "context_end_s": s.read_span[1],
                "status": "pending",
            }
            for i, s in enumerate(segments)
        ]
        statement = insert(session, SpeechSegment).values(rows)
        session.execute(statement.on_conflict_do_nothing(index_elements=["item_id", "index"]))


def pending_segment_batches(
    session: Session, item_id: int, batch_size: int, *, from_index: int = 0
) -> list[list[int]]:
    ids = session.scalars(
        select(SpeechSegment.id)
        .where(
            SpeechSegment.item_id == item_id,
            SpeechSegment.status == "pending",
            SpeechSegment.index >= from_index,
        )
        .order_by(SpeechSegment.index)
    ).all()
    return [list(ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)]


def claim_segments(session: Session, segment_ids: Iterable[int]) -> list[SpeechSegment]:
    """The still-pending segments among these, locked; those another delivery of the same task
    holds right now are skipped (PostgreSQL), not waited for and done twice."""
    query = (
        select(SpeechSegment)
        .where(SpeechSegment.id.in_(list(segment_ids)), SpeechSegment.status == "pending")
        .order_by(SpeechSegment.item_id, SpeechSegment.index)
    )
    if is_postgresql(session):
        query = query.with_for_update(skip_locked=True)
    return list(session.scalars(query))


def recording_chunks(session: Session, item_id: int, indices: Iterable[int]) -> dict[int, bytes]:
    rows = session.scalars(
        select(RecordingChunk)
        .where(RecordingChunk.item_id == item_id, RecordingChunk.index.in_(sorted(set(indices))))
        .options(undefer(RecordingChunk.flac))
    )
    return {row.index: row.flac for row in rows}


def chunk_seconds(session: Session, item_id: int) -> float:
    return session.get(Recording, item_id).chunk_s


def save_segment_predictions(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    if rows:
        statement = insert(session, SegmentPrediction).values(list(rows))
        session.execute(statement.on_conflict_do_nothing(index_elements=["segment_id", "model"]))


def finish_recordings(session: Session, item_ids: Iterable[int]) -> None:
    """Mark done each recording none of whose segments is pending. The item is locked first, so
    of two tasks finishing its last segments at once, the later one sees the other's."""
    for item_id in sorted(set(item_ids)):
        item = locked_item(session, item_id)
        pending = session.scalar(
            select(func.count())
            .select_from(SpeechSegment)
            .where(SpeechSegment.item_id == item_id, SpeechSegment.status == "pending")
        )
        if item.status == "pending" and not pending and is_segmented(session, item_id):
            failed = session.scalar(
                select(func.count())
                .select_from(SpeechSegment)
                .where(SpeechSegment.item_id == item_id, SpeechSegment.status == "failed")
            )
            item.status, item.processed_at = "done", utcnow()
            if failed:
                item.error = f"{failed} segments could not be classified (see `ser-cli timeline`)"


# --- reading ------------------------------------------------------------------------------------


def timeline_rows(
    session: Session, submission_id: str, *, models: Sequence[str] = RESULT_MODELS
) -> list[dict[str, Any]]:
    """One row per segment and model (the `ser-cli timeline` JSON), by recording then start."""
    submission = session.get(Submission, submission_id)
    if submission is None:
        raise KeyError(submission_id)
    version = submission.model_version
    if version is not None:
        models = [model for model in models if model in version_models(version.manifest)]
    query = (
        select(SubmissionItem, SpeechSegment, SegmentPrediction)
        .join(SpeechSegment, SpeechSegment.item_id == SubmissionItem.id)
        .join(SegmentPrediction, SegmentPrediction.segment_id == SpeechSegment.id)
        .where(SubmissionItem.submission_id == submission_id, SegmentPrediction.model.in_(models))
        .order_by(SubmissionItem.id, SpeechSegment.start_s, SpeechSegment.index)
    )
    order = {model: i for i, model in enumerate(RESULT_MODELS)}
    found = sorted(
        session.execute(query).all(),
        key=lambda r: (r[0].id, r[1].start_s, r[1].index, order.get(r[2].model, len(order))),
    )
    return [
        {
            "submission": submission_id,
            "recording": item.filename,
            "sha256": item.sha256,
            "segment": segment.index,
            "start_s": segment.start_s,
            "end_s": segment.end_s,
            "model": prediction.model,
            "model_version": version.version if version else None,
            "emotion": prediction.emotion,
            "confidence": prediction.confidence,
            "probabilities": prediction.probabilities,
            "uncertain": prediction.uncertain,
        }
        for item, segment, prediction in found
    ]


def recordings(session: Session, submission_id: str) -> list[dict[str, Any]]:
    """Each recording of a timeline submission: status, duration, speech time, segment count."""
    rows = session.execute(
        select(SubmissionItem, Recording)
        .outerjoin(Recording, Recording.item_id == SubmissionItem.id)
        .where(SubmissionItem.submission_id == submission_id)
        .order_by(SubmissionItem.id)
    ).all()
    return [
        {
            "recording": item.filename,
            "sha256": item.sha256,
            "status": item.status,
            "error_code": item.error_code,
            "error": item.error,
            "duration_s": recording.duration_s if recording else None,
            "speech_s": recording.speech_s if recording else None,
            "segments": recording.n_segments if recording else None,
            "stored_bytes": recording.stored_bytes if recording else None,
        }
        for item, recording in rows
    ]


def recording_summaries(
    session: Session, submission_id: str, *, model: str = ENSEMBLE
) -> list[dict[str, Any]]:
    """Each recording's dominant emotion (by `model`) and the share of its speech time per
    emotion. Overlapping windows of one speech run each count for their own length."""
    seconds: dict[int, dict[str, float]] = defaultdict(lambda: dict.fromkeys(EMOTIONS, 0.0))
    query = (
        select(SpeechSegment.item_id, SpeechSegment.start_s, SpeechSegment.end_s)
        .add_columns(SegmentPrediction.emotion)
        .join(SegmentPrediction, SegmentPrediction.segment_id == SpeechSegment.id)
        .join(SubmissionItem, SubmissionItem.id == SpeechSegment.item_id)
        .where(SubmissionItem.submission_id == submission_id, SegmentPrediction.model == model)
    )
    for item_id, start_s, end_s, emotion in session.execute(query):
        seconds[item_id][emotion] += end_s - start_s
    items = session.scalars(
        select(SubmissionItem)
        .where(SubmissionItem.submission_id == submission_id)
        .order_by(SubmissionItem.id)
    )
    summaries = []
    for item in items:
        shares = seconds.get(item.id)
        total = sum(shares.values()) if shares else 0.0
        summaries.append(
            {
                "recording": item.filename,
                "status": item.status,
                "model": model,
                "dominant_emotion": max(shares, key=shares.get) if total else None,
                "speech_share": {e: s / total for e, s in shares.items()} if total else {},
                "note": item.error,
            }
        )
    return summaries
