"""audio_blobs.data kept uncompressed out of line on PostgreSQL: a recording is read in slices

A worker reads a recording of hours a slice at a time (store.copy_audio, with substr), never
whole. With PostgreSQL's EXTERNAL storage a slice reads only its own TOAST chunks; a value
compressed by pglz would be decompressed from its start for every slice. Audio gains little
from pglz anyway: FLAC, MP3 and Opus are compressed already. Rows stored before keep their
storage; SQLite has no such setting, so nothing changes there.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 19:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _on_postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if _on_postgresql():
        op.execute("ALTER TABLE audio_blobs ALTER COLUMN data SET STORAGE EXTERNAL")


def downgrade() -> None:
    if _on_postgresql():
        op.execute("ALTER TABLE audio_blobs ALTER COLUMN data SET STORAGE EXTENDED")
