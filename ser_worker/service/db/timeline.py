"""The timeline's tables: a recording (one submission item of a ``timeline`` submission), its
decoded audio in FLAC chunks, its speech segments and each segment's predictions.

The decoded 16 kHz mono audio is kept so a segment task reads only the chunks its offsets touch:
tasks carry segment ids, never audio. A segment's predictions are keyed by (segment, model), so a
redelivered task cannot store them twice.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ser_worker.service.db.models import Base, utcnow


class Recording(Base):
    """Written once, in the transaction that stores the segments: its presence means the
    recording was decoded and segmented."""

    __tablename__ = "recordings"

    item_id: Mapped[int] = mapped_column(ForeignKey("submission_items.id"), primary_key=True)
    duration_s: Mapped[float] = mapped_column(Float)
    speech_s: Mapped[float] = mapped_column(Float)
    n_segments: Mapped[int] = mapped_column(Integer)
    chunk_s: Mapped[float] = mapped_column(Float)
    stored_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RecordingChunk(Base):
    __tablename__ = "recording_chunks"

    item_id: Mapped[int] = mapped_column(ForeignKey("submission_items.id"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    flac: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)


class SpeechSegment(Base):
    __tablename__ = "segments"
    __table_args__ = (UniqueConstraint("item_id", "index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("submission_items.id"), index=True)
    index: Mapped[int] = mapped_column(Integer)
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(8), default="pending")
    error_code: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    processed_at: Mapped[datetime | None]


class SegmentPrediction(Base):
    __tablename__ = "segment_predictions"
    __table_args__ = (UniqueConstraint("segment_id", "model"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    segment_id: Mapped[int] = mapped_column(ForeignKey("segments.id"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    model: Mapped[str] = mapped_column(String(16))
    emotion: Mapped[str] = mapped_column(String(3))
    confidence: Mapped[float] = mapped_column(Float)
    probabilities: Mapped[dict[str, Any]]
