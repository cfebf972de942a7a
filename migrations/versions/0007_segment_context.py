"""segments.context_start_s / context_end_s: the span of the recording a segment's models read

A segment reports where speech was found (start_s, end_s); its models also read up to
SER_SEGMENT_CONTEXT_S of the recording around it, never into a neighbour's half of a pause,
because they learnt from clips with their silence around the speech. Segments stored before
have neither column and are read from start_s to end_s, as they were.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 19:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # ALTER TABLE ADD COLUMN, nullable: SQLite adds it without copying the table.
    with op.batch_alter_table("segments", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("context_start_s", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("context_end_s", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("segments", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("context_end_s")
        batch_op.drop_column("context_start_s")
