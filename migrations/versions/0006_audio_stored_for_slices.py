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


def _storage(kind: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER TABLE audio_blobs ALTER COLUMN data SET STORAGE {kind}")


def upgrade() -> None:
    _storage("EXTERNAL")


def downgrade() -> None:
    _storage("EXTENDED")
