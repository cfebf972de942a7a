"""predictions.uncertain, segment_predictions.uncertain: the best class held less than the
bundle's threshold (its manifest's calibration.uncertain_below)

Rows stored before this column come from bundles without a calibration record, whose threshold
is 0.5: they are backfilled with `confidence < 0.5`, then the column is made NOT NULL.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("predictions", "segment_predictions")
# What a bundle without a calibration record means (bundle.manifest.Calibration's default).
UNCERTAIN_BELOW = 0.5


def upgrade() -> None:
    for name in TABLES:
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.add_column(sa.Column("uncertain", sa.Boolean(), nullable=True))
        table = sa.table(name, sa.column("uncertain", sa.Boolean()), sa.column("confidence"))
        op.execute(table.update().values(uncertain=table.c.confidence < UNCERTAIN_BELOW))
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.alter_column(
                "uncertain",
                existing_type=sa.Boolean(),
                nullable=False,
                server_default=sa.false(),
            )


def downgrade() -> None:
    for name in reversed(TABLES):
        with op.batch_alter_table(name, schema=None) as batch_op:
            batch_op.drop_column("uncertain")
