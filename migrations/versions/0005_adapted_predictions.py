"""submissions.adapt, adapted_predictions: per-submission adaptation (`ser-cli submit --adapt`)

An adapt submission's clips are predicted together, the speech encoder's vectors standardised by
the submission's own statistics: each answer depends on the other clips of that submission, so
it belongs to the submission, not to the clip. `predictions` stays keyed by (audio, version,
model) and reusable by any submission; `adapted_predictions` is keyed by (submission, audio,
model). Submissions made before this column were not adapted.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Without copying the table, which SQLite cannot drop while other tables refer to it: an
    # ALTER TABLE ADD COLUMN with a constant default (false on PostgreSQL, 0 on SQLite).
    with op.batch_alter_table("submissions", schema=None, recreate="never") as batch_op:
        batch_op.add_column(
            sa.Column("adapt", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "adapted_predictions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("submission_id", sa.String(length=32), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=16), nullable=False),
        sa.Column("emotion", sa.String(length=3), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("probabilities", sa.JSON(), nullable=False),
        sa.Column("uncertain", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["submission_id"],
            ["submissions.id"],
            name=op.f("fk_adapted_predictions_submission_id_submissions"),
        ),
        sa.ForeignKeyConstraint(
            ["sha256"],
            ["audio_blobs.sha256"],
            name=op.f("fk_adapted_predictions_sha256_audio_blobs"),
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_adapted_predictions_model_version_id_model_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adapted_predictions")),
        sa.UniqueConstraint(
            "submission_id", "sha256", "model", name=op.f("uq_adapted_predictions_submission_id")
        ),
    )


def downgrade() -> None:
    op.drop_table("adapted_predictions")
    # ALTER TABLE DROP COLUMN (SQLite 3.35 and later), again without copying the table.
    with op.batch_alter_table("submissions", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("adapt")
