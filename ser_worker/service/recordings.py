"""What the timeline tasks run: a recording decoded once, a chunk at a time, into 16 kHz mono
FLAC chunks and speech segments; then each segment read back from the chunks its offsets touch,
prepared as the bundle's members read a clip, and predicted.

A recording of hours is never held whole: decoding, resampling, the voice-activity detector and
the FLAC encoder all work on one chunk at a time, and a segment task reads only its chunks.
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from sqlalchemy.orm import Session

from ser_worker.config import get_settings
from ser_worker.labels import SAMPLE_RATE
from ser_worker.service import store
from ser_worker.service.db.models import SubmissionItem, utcnow
from ser_worker.service.db.session import session_scope
from ser_worker.service.store import segments as timeline_store

if TYPE_CHECKING:
    from ser_worker.service.db.models import SpeechSegment

log = logging.getLogger(__name__)

# Seconds of decoded audio per stored FLAC chunk: a segment (at most a window) touches one or two.
CHUNK_S = 30.0
# Chunks committed (with the segments settled in them) at a time: the fan-out starts early.
PART_CHUNKS = 10


def decoded_chunks(data: bytes | BinaryIO, max_duration_s: float) -> Iterator[np.ndarray]:
    """The recording (its bytes, or a seekable file of them) as float32 mono SAMPLE_RATE chunks
    of CHUNK_S (the last one shorter).

    Raises AudioError: not_audio when libsndfile cannot read it, too_long from the header.
    """
    import soundfile as sf
    import soxr

    from ser_worker.audio import EmptyAudioError, NotAudioError, TooLongError

    file = io.BytesIO(data) if isinstance(data, bytes) else data
    if file.seek(0, io.SEEK_END) == 0:
        raise EmptyAudioError("the file is empty")
    file.seek(0)
    try:
        source = sf.SoundFile(file)
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise NotAudioError(f"not a readable audio file: {error}") from None
    with source:
        duration_s = source.frames / source.samplerate if source.samplerate else 0.0
        if duration_s > max_duration_s:
            raise TooLongError(
                f"recording is {duration_s:.0f} s long; the maximum is {max_duration_s:g} s "
                "(SER_MAX_RECORDING_S)"
            )
        resampler = (
            soxr.ResampleStream(source.samplerate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            if source.samplerate != SAMPLE_RATE
            else None
        )
        block = int(CHUNK_S * source.samplerate)
        while True:
            frames = source.read(block, dtype="float32", always_2d=True)
            last = len(frames) < block
            y = frames.mean(axis=1, dtype=np.float32) if len(frames) else np.zeros(0, np.float32)
            if resampler is not None:
                y = resampler.resample_chunk(y, last=last)
            if y.size:
                yield np.nan_to_num(y, nan=0.0, posinf=1.0, neginf=-1.0)
            if last:
                return


def flac_bytes(y: np.ndarray) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(y, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def segment_recording(item_id: int, enqueue: Callable[[list[int]], None]) -> None:
    """Decode one recording into stored chunks and pending segments (or fail it with its code),
    committing every PART_CHUNKS chunks the segments settled so far and handing their ids to
    `enqueue`: the workers start on the first minutes while the rest is still being decoded.

    A redelivered task decodes again and writes only what is missing (the detector gives the
    same segments, indices included), then enqueues the segments still pending: the first
    delivery may have died before enqueueing them. The recording row, written last, marks the
    segmentation complete; a recording is done only once it exists and no segment is pending.
    """
    from ser_worker.audio import AudioError
    from ser_worker.segments import SegmentSettings, SpeechDetector

    with session_scope() as session:
        item = session.get(SubmissionItem, item_id)
        if (
            item is None
            or item.status != "pending"
            or timeline_store.is_segmented(session, item_id)
        ):
            return
        # On disk, not in memory: the file is read back a chunk at a time by the decoder.
        data = tempfile.TemporaryFile()
        try:
            store.copy_audio(session, item.sha256, data)
        except BaseException:
            data.close()  # the task is retried or fails: the file must not wait for the GC
            raise
    settings = get_settings()
    detector = SpeechDetector(SegmentSettings.from_settings(settings))
    chunks: list[tuple[int, bytes]] = []
    saved, stored = 0, 0
    try:
        with data:
            for index, chunk in enumerate(decoded_chunks(data, settings.max_recording_s)):
                detector.feed(chunk)
                chunks.append((index, flac_bytes(chunk)))
                stored += len(chunks[-1][1])
                if len(chunks) == PART_CHUNKS:
                    saved = _save_part(item_id, chunks, detector.settled(), saved, enqueue)
                    chunks = []
    except Exception as error:  # an odd file must fail this recording, not the task forever
        code = error.code if isinstance(error, AudioError) else "decode_error"
        message = (
            str(error) if isinstance(error, AudioError) else f"{type(error).__name__}: {error}"
        )
        with session_scope() as session:
            _fail(session.get(SubmissionItem, item_id), code, message)
        return
    segments = detector.segments()
    with session_scope() as session:
        for index, flac in chunks:
            timeline_store.save_chunk(session, item_id, index, flac)
        timeline_store.save_segments(session, item_id, segments[saved:], first_index=saved)
        item = timeline_store.locked_item(session, item_id)
        timeline_store.save_recording(
            session,
            item,
            segments,
            duration_s=detector.n_samples / SAMPLE_RATE,
            chunk_s=CHUNK_S,
            stored_bytes=stored,
        )
        session.flush()
        timeline_store.finish_recordings(session, [item_id])
    enqueue_pending(item_id, saved, enqueue)
    log.info("recording %s: %d speech segments", item_id, len(segments))


def _save_part(item_id, chunks, settled, saved: int, enqueue) -> int:
    """Commit these chunks and the newly settled segments, then enqueue those; the count saved."""
    with session_scope() as session:
        for index, flac in chunks:
            timeline_store.save_chunk(session, item_id, index, flac)
        timeline_store.save_segments(session, item_id, settled[saved:], first_index=saved)
    enqueue_pending(item_id, saved, enqueue)
    return max(saved, len(settled))


def enqueue_pending(item_id: int, from_index: int, enqueue: Callable[[list[int]], None]) -> None:
    batch_size = get_settings().segment_batch_size
    with session_scope() as session:
        batches = timeline_store.pending_segment_batches(
            session, item_id, batch_size, from_index=from_index
        )
    for batch in batches:
        enqueue(batch)


def _fail(item: SubmissionItem, code: str, message: str) -> None:
    item.status, item.error_code, item.error, item.processed_at = "failed", code, message, utcnow()


def predict_segments(session: Session, segment_ids: list[int]) -> dict[str, int]:
    """Claim the pending segments among these, predict them in one batch, store the rows, mark
    them done (or failed, alone, with a code), and finish the recordings left with none pending."""
    from ser_worker.audio import AudioError
    from ser_worker.bundle import BundleError
    from ser_worker.service import runtime

    segments = timeline_store.claim_segments(session, segment_ids)
    if not segments:
        return {"done": 0, "failed": 0}
    items = {s.item_id: session.get(SubmissionItem, s.item_id) for s in segments}
    version_id = next(iter(items.values())).submission.model_version_id
    failures: dict[int, tuple[str, str]] = {}
    prepared: dict[int, Any] = {}
    try:
        bundle = runtime.bundle_for(session, version_id)
    except BundleError as error:
        failures = {
            s.id: ("model_error", f"the model version cannot be used: {error}") for s in segments
        }
    else:
        limits = runtime.audio_limits()
        audio = SegmentAudio(session)
        for segment in segments:
            try:
                prepared[segment.id] = bundle.prepare(audio.read(segment), SAMPLE_RATE, limits)
            except AudioError as error:
                failures[segment.id] = (error.code, str(error))
        if prepared:
            predictions = bundle.predict_prepared(list(prepared.values()))
            rows = [
                {
                    "segment_id": segment_id,
                    "model_version_id": version_id,
                    "model": model,
                    "emotion": p.emotion,
                    "confidence": p.confidence,
                    "probabilities": p.probabilities,
                    "uncertain": p.uncertain,
                }
                for segment_id, by_model in zip(prepared, predictions, strict=True)
                for model, p in by_model.items()
            ]
            timeline_store.save_segment_predictions(session, rows)
    now = utcnow()
    for segment in segments:
        segment.processed_at = now
        if segment.id in failures:
            segment.status = "failed"
            segment.error_code, segment.error = failures[segment.id]
        else:
            segment.status = "done"
    session.flush()
    timeline_store.finish_recordings(session, items)
    return {"done": len(prepared), "failed": len(failures)}


class SegmentAudio:
    """The samples a segment's models read (its context span), from the stored chunks those
    offsets touch (each decoded once)."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._chunks: dict[tuple[int, int], np.ndarray] = {}

    def read(self, segment: SpeechSegment) -> np.ndarray:
        import soundfile as sf

        chunk_s = CHUNK_S  # the recording row, written last, may not exist yet
        start_s, end_s = segment.start_s, segment.end_s
        if segment.context_start_s is not None and segment.context_end_s is not None:
            start_s, end_s = segment.context_start_s, segment.context_end_s
        first = int(start_s // chunk_s)
        last = int(max(end_s - 1e-6, start_s) // chunk_s)
        wanted = [i for i in range(first, last + 1) if (segment.item_id, i) not in self._chunks]
        for index, flac in timeline_store.recording_chunks(
            self.session, segment.item_id, wanted
        ).items():
            y, _ = sf.read(io.BytesIO(flac), dtype="float32")
            self._chunks[(segment.item_id, index)] = y
        joined = np.concatenate(
            [
                self._chunks.get((segment.item_id, i), np.zeros(0, np.float32))
                for i in range(first, last + 1)
            ]
        )
        offset = first * chunk_s
        start = int(round((start_s - offset) * SAMPLE_RATE))
        end = int(round((end_s - offset) * SAMPLE_RATE))
        return np.ascontiguousarray(joined[start:end])
