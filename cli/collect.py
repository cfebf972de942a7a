"""Turn the paths a user gives into uploads: bytes read once, labels from names, problems named.

Runs in the CLI process: standard library and ``ser_worker.datasets`` only (no librosa).
"""

from dataclasses import dataclass, field
from pathlib import Path

from ser_worker.datasets import find_audio_files, label_for_path
from ser_worker.service.store import ClipUpload


class NothingToSubmit(Exception):
    """A path does not exist, or no audio file was found under the given paths."""


@dataclass
class Collected:
    uploads: list[ClipUpload] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    unlabelled: dict[str, int] = field(default_factory=dict)


def collect(paths: list[Path], *, scheme: str, max_bytes: int) -> Collected:
    collected = Collected()
    for root in paths:
        if not root.exists():
            raise NothingToSubmit(f"{root}: no such file or directory")
        audio_files, other_files = find_audio_files(root)
        collected.unsupported.extend(str(path) for path in other_files)
        for path in audio_files:
            collected.uploads.append(_read(path, root, scheme, max_bytes, collected.unlabelled))
    if not collected.uploads:
        where = ", ".join(str(path) for path in paths)
        raise NothingToSubmit(f"no audio files (.wav .flac .ogg .mp3) found under {where}")
    return collected


def _display_name(path: Path, root: Path) -> str:
    name = path.name if root.is_file() else str(Path(root.resolve().name) / path.relative_to(root))
    # A name that is not valid UTF-8 (old Latin-1 archives) reaches Python as surrogate escapes,
    # which no database text column accepts: show each undecodable byte as U+FFFD instead.
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _read(
    path: Path, root: Path, scheme: str, max_bytes: int, unlabelled: dict[str, int]
) -> ClipUpload:
    label = label_for_path(path, scheme)
    if label.skip_reason:
        unlabelled[label.skip_reason] = unlabelled.get(label.skip_reason, 0) + 1
    name = _display_name(path, root)
    common = {"filename": name, "true_emotion": label.emotion, "speaker": label.speaker}
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return ClipUpload(
                data=None,
                error_code="too_large",
                error=f"file is {size:,} bytes; the limit is {max_bytes:,} (SER_MAX_FILE_BYTES)",
                **common,
            )
        return ClipUpload(data=path.read_bytes(), **common)
    except OSError as error:
        return ClipUpload(
            data=None,
            error_code="unreadable",
            error=f"cannot read file: {error.strerror}",
            **common,
        )
