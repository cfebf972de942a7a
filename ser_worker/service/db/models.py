"""The SQL schema. Alembic (``migrations/``) owns it; these typed models mirror it.

Audio is stored once per content hash; predictions are keyed by (audio, model version, model),
so a clip submitted twice is decoded and predicted once per model version, and a unique
constraint, not luck, keeps a redelivered task from storing a prediction twice.
"""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class AudioBlob(Base):
    __tablename__ = "audio_blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size_bytes: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        # At most one active version, enforced by the database.
        Index(
            "uq_model_versions_one_active",
            "active",
            unique=True,
            postgresql_where=text("active"),
            sqlite_where=text("active"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    source: Mapped[str] = mapped_column(String(16))  # "shipped" or "trained"
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    bundle_sha256: Mapped[str] = mapped_column(String(64))
    bundle: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
    manifest: Mapped[dict[str, Any]]


class Submission(Base):
    __tablename__ = "submissions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "predict", "evaluate" or "train"
    label_scheme: Mapped[str] = mapped_column(String(16))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    force: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set once every clip was handed to the queue; NULL = the CLI stopped before (recoverable).
    enqueued_at: Mapped[datetime | None]
    # Per-submission adaptation (`submit --adapt`): the clips are predicted together, in one
    # task, and their predictions are in `adapted_predictions`, never in `predictions`.
    adapt: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    items: Mapped[list["SubmissionItem"]] = relationship(back_populates="submission")
    model_version: Mapped[ModelVersion | None] = relationship()


class SubmissionItem(Base):
    """One file of a submission. ``filename`` is for display only and never a path on workers."""

    __tablename__ = "submission_items"

    id: Mapped[int] = mapped_column(primary_key=True)
    submission_id: Mapped[str] = mapped_column(ForeignKey("submissions.id"), index=True)
    sha256: Mapped[str | None] = mapped_column(ForeignKey("audio_blobs.sha256"), index=True)
    filename: Mapped[str] = mapped_column(Text)
    true_emotion: Mapped[str | None] = mapped_column(String(3))
    speaker: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(8), default="pending", index=True)
    error_code: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    duration_s: Mapped[float | None] = mapped_column(Float)
    processed_at: Mapped[datetime | None]

    submission: Mapped[Submission] = relationship(back_populates="items")


class _Answer:
    """What a model answered for one clip or segment: the columns every prediction table has."""

    model: Mapped[str] = mapped_column(String(16))  # one of labels.RESULT_MODELS
    emotion: Mapped[str] = mapped_column(String(3))
    confidence: Mapped[float] = mapped_column(Float)
    probabilities: Mapped[dict[str, Any]]
    # The best class held less than the bundle's calibration.uncertain_below.
    uncertain: Mapped[bool] = mapped_column(Boolean, server_default=false())


class Prediction(_Answer, Base):
    __tablename__ = "predictions"
    __table_args__ = (UniqueConstraint("sha256", "model_version_id", "model"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("audio_blobs.sha256"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AdaptedPrediction(_Answer, Base):
    """A prediction of an adapt submission: the speech encoder read the clip standardised by the
    statistics of every clip of its submission, so the answer belongs to the submission and is
    never reused by another (unlike `Prediction`). Same columns, plus the submission."""

    __tablename__ = "adapted_predictions"
    __table_args__ = (UniqueConstraint("submission_id", "sha256", "model"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    submission_id: Mapped[str] = mapped_column(ForeignKey("submissions.id"))
    sha256: Mapped[str] = mapped_column(ForeignKey("audio_blobs.sha256"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TrainingRun(Base):
    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    trigger: Mapped[str] = mapped_column(String(16))  # "cli" or "schedule"
    status: Mapped[str] = mapped_column(String(16), default="queued")
    submission_id: Mapped[str | None] = mapped_column(ForeignKey("submissions.id"))
    params: Mapped[dict[str, Any]]
    # Highest labelled item id the run trained on: "nothing new" means no labelled item above it.
    data_cutoff: Mapped[int | None] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"))
    promoted: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class Evaluation(Base):
    __tablename__ = "evaluations"

    id: Mapped[int] = mapped_column(primary_key=True)
    submission_id: Mapped[str] = mapped_column(ForeignKey("submissions.id"), unique=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    n_clips: Mapped[int] = mapped_column(Integer)
    skipped: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# --- the timeline: a recording, its decoded audio, its segments and their predictions ------
# A recording is one submission item of a ``timeline`` submission; its decoded audio is kept
# in FLAC chunks.
#
# The decoded 16 kHz mono audio is kept so a segment task reads only the chunks its offsets touch:
# tasks carry segment ids, never audio. A segment's predictions are keyed by (segment, model), so a
# redelivered task cannot store them twice.


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
    # The span the models read (segments.Segment.context); None: start_s to end_s, as segments
    # stored before it were read.
    context_start_s: Mapped[float | None] = mapped_column(Float)
    context_end_s: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(8), default="pending")
    error_code: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    processed_at: Mapped[datetime | None]


class SegmentPrediction(_Answer, Base):
    __tablename__ = "segment_predictions"
    __table_args__ = (UniqueConstraint("segment_id", "model"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    segment_id: Mapped[int] = mapped_column(ForeignKey("segments.id"))
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
