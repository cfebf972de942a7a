"""submissions.enqueued_at: when the CLI finished handing a submission's clips to the queue

A CLI stopped between storing a submission and enqueueing it (a crash, a kill, the broker gone)
leaves it NULL, which is how the next `submit`, `status` or `--wait` finds clips nobody will
process and queues them. Submissions made before this column are taken as enqueued.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 23:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("submissions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True))
    submissions = sa.table("submissions", sa.column("enqueued_at"), sa.column("created_at"))
    op.execute(submissions.update().values(enqueued_at=submissions.c.created_at))


def downgrade() -> None:
    with op.batch_alter_table("submissions", schema=None) as batch_op:
        batch_op.drop_column("enqueued_at")
