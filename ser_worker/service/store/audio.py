"""Audio is stored once per content hash, whoever submits it and however often."""

import hashlib
from collections.abc import Iterable, Sequence
from typing import BinaryIO

from sqlalchemy import LargeBinary, func, select
from sqlalchemy.orm import Session, undefer

from ser_worker.service.db.models import AudioBlob
from ser_worker.service.store.sql import insert


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def store_audio(session: Session, clips: Sequence[bytes]) -> list[str]:
    """Store each content once: bytes already in the store are not sent to the database again.

    Returns the sha256 of every clip, in order.
    """
    digests = [sha256_hex(data) for data in clips]
    known = set(session.scalars(select(AudioBlob.sha256).where(AudioBlob.sha256.in_(digests))))
    new = {digest: data for digest, data in zip(digests, clips, strict=True) if digest not in known}
    if new:
        rows = [{"sha256": d, "size_bytes": len(data), "data": data} for d, data in new.items()]
        # A concurrent submission may store the same clip between the query and the insert.
        session.execute(
            insert(session, AudioBlob).on_conflict_do_nothing(index_elements=["sha256"]), rows
        )
    return digests


def audio_data(session: Session, sha256s: Iterable[str]) -> dict[str, bytes]:
    """The stored bytes of these clips (deferred on the model: only workers read them)."""
    blobs = session.scalars(
        select(AudioBlob).where(AudioBlob.sha256.in_(set(sha256s))).options(undefer(AudioBlob.data))
    )
    return {blob.sha256: blob.data for blob in blobs}


# A recording is read from the database this many bytes at a time: hours of audio (345 MB per
# 3 hours of 16 kHz WAV, twice that as PostgreSQL's hex text on the wire) are never held whole.
READ_SLICE_BYTES = 8 * 1024 * 1024


def copy_audio(
    session: Session, sha256: str, out: BinaryIO, slice_bytes: int = READ_SLICE_BYTES
) -> int:
    """Write the stored bytes of one clip or recording to `out`, a slice at a time; its size.

    Raises LookupError when nothing is stored under `sha256`."""
    size = session.scalar(select(AudioBlob.size_bytes).where(AudioBlob.sha256 == sha256))
    if size is None:
        raise LookupError(f"no audio stored under {sha256}")
    for start in range(0, size, slice_bytes):
        # substr counts bytes from 1 on a bytea (PostgreSQL) and a BLOB (SQLite) alike.
        piece = func.substr(AudioBlob.data, start + 1, slice_bytes, type_=LargeBinary)
        out.write(session.scalar(select(piece).where(AudioBlob.sha256 == sha256)))
    return size
