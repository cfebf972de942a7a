"""Turn the paths a user gives into uploads: what to send found first, bytes read once and sent in
bounded batches, labels from names, problems named.

Two steps, so nothing is stored before the whole input is known and the services are up:
``collect`` walks and stats (no file is opened), ``store_clips`` then reads each file once and
stores the audio a batch at a time, so memory holds one batch whatever the folder's size.

Runs in the CLI process: standard library and ``ser_worker.datasets`` only (no librosa).
"""

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ser_worker.datasets import label_for_path
from ser_worker.datasets.names import is_audio
from ser_worker.service import store
from ser_worker.service.db.session import session_scope
from ser_worker.service.store import ClipUpload

# One transaction of audio holds at most this many clips or bytes (one clip may exceed the bytes
# alone, up to SER_MAX_FILE_BYTES).
BATCH_CLIPS = 64
BATCH_BYTES = 64 * 2**20
_READ_CHUNK = 2**20
_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class NothingToSubmit(Exception):
    """A path does not exist, or no audio file was found under the given paths."""


@dataclass(frozen=True)
class Clip:
    """An audio file found by the walk, not yet read; or why it cannot be (error set)."""

    path: Path
    filename: str
    true_emotion: str | None = None
    speaker: str | None = None
    error_code: str | None = None
    error: str | None = None


@dataclass
class Collected:
    clips: list[Clip] = field(default_factory=list)
    # (path, why) of every file or folder left out, in the order met.
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    unlabelled: dict[str, int] = field(default_factory=dict)
    # Real paths of the hidden files and folders left out (a set: roots may overlap).
    hidden_paths: set[str] = field(default_factory=set)

    @property
    def unsupported(self) -> list[str]:
        return [str(path) for path, _ in self.skipped]

    @property
    def hidden(self) -> int:
        return len(self.hidden_paths)


def collect(paths: Sequence[Path], *, scheme: str, max_bytes: int) -> Collected:
    """Every audio file under ``paths``, each once (by real path), named relative to the common
    parent of the roots, so two folders both called ``clips`` stay apart in the results."""
    roots = [_anchor(Path(root)) for root in paths]
    base = os.path.commonpath([anchor.parent for _, anchor in roots])
    collected, seen = Collected(), set()
    for root, anchor in roots:
        # Sorted by path, as the walk of earlier versions was: the order items are stored in.
        for path, reason in sorted(_walk(root, collected), key=lambda entry: entry[0]):
            key = os.path.realpath(path)
            if key in seen:
                continue
            seen.add(key)
            if reason is not None:
                collected.skipped.append((path, reason))
                continue
            name = os.path.relpath(anchor / path.relative_to(root), base)
            clip = _clip(path, name, scheme, max_bytes)
            if clip is not None:
                collected.clips.append(clip)
                _count_unlabelled(clip, scheme, collected.unlabelled)
            else:
                collected.skipped.append((path, _not_regular(path)))
    if not collected.clips:
        where = ", ".join(str(path) for path in paths)
        raise NothingToSubmit(f"no audio files (.wav .flac .ogg .mp3) found under {where}")
    return collected


def _anchor(root: Path) -> tuple[Path, Path]:
    """(root as given, its absolute location with links resolved above the last component)."""
    try:
        os.stat(root)
    except FileNotFoundError:
        raise NothingToSubmit(f"{root}: no such file or directory") from None
    except OSError as error:
        raise NothingToSubmit(f"{root}: {error.strerror}") from None
    if root.is_dir():
        return root, Path(os.path.realpath(root))
    return root, Path(os.path.realpath(root.parent)) / root.name


def _walk(root: Path, collected: Collected):
    """(path, None) for each audio file name, (path, why) for each other thing left out.

    Hidden files and folders (dot-names: macOS ``._name.wav`` resource forks, ``.git``) are
    counted, not listed. Links to folders are not followed: one pointing up the tree would
    loop forever.
    """
    if not root.is_dir():
        yield root, None if is_audio(root) else "not a supported audio file"
        return
    unreadable: list[tuple[Path, str]] = []

    def folder_error(error: OSError) -> None:
        unreadable.append((Path(error.filename), f"folder not readable ({error.strerror})"))

    for folder, dirnames, filenames in os.walk(root, onerror=folder_error, followlinks=False):
        yield from unreadable
        unreadable.clear()
        hidden = [name for name in dirnames + filenames if name.startswith(".")]
        collected.hidden_paths.update(os.path.realpath(Path(folder, name)) for name in hidden)
        dirnames[:] = sorted(name for name in dirnames if not name.startswith("."))
        for name in sorted(filenames):
            path = Path(folder, name)
            if not name.startswith("."):
                yield path, None if is_audio(path) else "not a supported audio file"
    yield from unreadable


def _clip(path: Path, name: str, scheme: str, max_bytes: int) -> Clip | None:
    """The file as a clip to read, or None when it is not a regular file (never opened)."""
    label = label_for_path(path, scheme)
    # A name that is not valid UTF-8 (old Latin-1 archives) reaches Python as surrogate escapes,
    # which no database text column accepts: show each undecodable byte as U+FFFD instead.
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    clip = Clip(path, name, label.emotion, label.speaker)
    try:
        info = os.stat(path)
    except OSError as error:  # a dangling link, a name too long for the system
        return replace(clip, error_code="unreadable", error=f"cannot read file: {error.strerror}")
    if not stat.S_ISREG(info.st_mode):
        return None
    if info.st_size > max_bytes:
        return replace(clip, error_code="too_large", error=_too_large(info.st_size, max_bytes))
    return clip


def _not_regular(path: Path) -> str:
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        return f"cannot read file: {error.strerror}"
    kind = next((kind for test, kind in _KINDS if test(mode)), "not a regular file")
    return f"{kind}, not a regular file: not read"


def _too_large(size: int | None, max_bytes: int) -> str:
    shown = f"{size:,} bytes" if size is not None else f"more than {max_bytes:,} bytes"
    return f"file is {shown}; the limit is {max_bytes:,} (SER_MAX_FILE_BYTES)"


def _count_unlabelled(clip: Clip, scheme: str, unlabelled: dict[str, int]) -> None:
    reason = label_for_path(clip.path, scheme).skip_reason
    if reason:
        unlabelled[reason] = unlabelled.get(reason, 0) + 1


def read_clip(path: Path, max_bytes: int) -> bytes | tuple[str, str]:
    """The file's bytes, or (error code, message). Never more than ``max_bytes`` + 1 bytes are
    read, and nothing but a regular file is: the file may have changed since the walk."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        # Non-blocking: a named pipe put there since the walk opens at once instead of hanging.
        descriptor = os.open(path, flags | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        return "unreadable", f"cannot read file: {error.strerror}"
    with open(descriptor, "rb", buffering=0, closefd=True) as file:
        try:
            info = os.fstat(descriptor)
            if not stat.S_ISREG(info.st_mode):
                return "unreadable", "cannot read file: not a regular file"
            chunks, total = [], 0
            while total <= max_bytes:
                chunk = file.read(min(_READ_CHUNK, max_bytes + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
        except OSError as error:
            return "unreadable", f"cannot read file: {error.strerror}"
    if total > max_bytes:
        size = info.st_size if info.st_size > max_bytes else None
        return "too_large", _too_large(size, max_bytes)
    return b"".join(chunks)


def store_clips(
    clips: Sequence[Clip],
    *,
    max_bytes: int,
    batch_clips: int | None = None,
    batch_bytes: int | None = None,
) -> list[ClipUpload]:
    """Read each clip once and store its audio, one transaction per batch; the uploads returned
    refer to the stored audio by hash and hold no bytes.

    Audio is stored by content hash and belongs to no submission until one names it: if this
    stops half way, what was stored is unreferenced and harmless, and found again (not sent
    again) by the next submission of the same files.
    """
    batch_clips, batch_bytes = batch_clips or BATCH_CLIPS, batch_bytes or BATCH_BYTES
    uploads: list[ClipUpload] = []
    batch: list[tuple[int, bytes]] = []
    size = 0
    for clip in clips:
        common = {
            "filename": clip.filename,
            "true_emotion": clip.true_emotion,
            "speaker": clip.speaker,
        }
        result = (
            (clip.error_code, clip.error) if clip.error_code else read_clip(clip.path, max_bytes)
        )
        if isinstance(result, bytes):
            batch.append((len(uploads), result))
            size += len(result)
            uploads.append(ClipUpload(data=None, **common))
        else:
            code, error = result
            uploads.append(ClipUpload(data=None, error_code=code, error=error, **common))
        if len(batch) >= batch_clips or size >= batch_bytes:
            _store_batch(batch, uploads)
            batch, size = [], 0
    _store_batch(batch, uploads)
    return uploads


def _store_batch(batch: list[tuple[int, bytes]], uploads: list[ClipUpload]) -> None:
    if not batch:
        return
    with session_scope() as session:
        digests = store.store_audio(session, [data for _, data in batch])
    for (index, _), digest in zip(batch, digests, strict=True):
        uploads[index] = replace(uploads[index], sha256=digest)
