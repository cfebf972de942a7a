"""timelines: recordings, their decoded audio in FLAC chunks, speech segments, segment predictions

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 23:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _item_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["item_id"], ["submission_items.id"], name=op.f(f"fk_{table}_item_id_submission_items")
    )


def upgrade() -> None:
    op.create_table(
        "recordings",
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("speech_s", sa.Float(), nullable=False),
        sa.Column("n_segments", sa.Integer(), nullable=False),
        sa.Column("chunk_s", sa.Float(), nullable=False),
        sa.Column("stored_bytes", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        _item_fk("recordings"),
        sa.PrimaryKeyConstraint("item_id", name=op.f("pk_recordings")),
    )
    op.create_table(
        "recording_chunks",
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("flac", sa.LargeBinary(), nullable=False),
        _item_fk("recording_chunks"),
        sa.PrimaryKeyConstraint("item_id", "index", name=op.f("pk_recording_chunks")),
    )
    op.create_table(
        "segments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("start_s", sa.Float(), nullable=False),
        sa.Column("end_s", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("error_code", sa.String(length=32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        _item_fk("segments"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segments")),
        sa.UniqueConstraint("item_id", "index", name=op.f("uq_segments_item_id")),
    )
    op.create_index(op.f("ix_segments_item_id"), "segments", ["item_id"])
    op.create_table(
        "segment_predictions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("segment_id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=16), nullable=False),
        sa.Column("emotion", sa.String(length=3), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["segment_id"], ["segments.id"], name=op.f("fk_segment_predictions_segment_id_segments")
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_segment_predictions_model_version_id_model_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_segment_predictions")),
        sa.UniqueConstraint("segment_id", "model", name=op.f("uq_segment_predictions_segment_id")),
    )


def downgrade() -> None:
    op.drop_table("segment_predictions")
    op.drop_index(op.f("ix_segments_item_id"), table_name="segments")
    op.drop_table("segments")
    op.drop_table("recording_chunks")
    op.drop_table("recordings")
