"""CREMA-D as shipped with ser: its speaker-independent split, and the manifest that checks a
local copy file by file."""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ser_worker.datasets.corpus import LabelledClip
from ser_worker.datasets.names import find_audio_files
from ser_worker.datasets.splits import Split

_DATA = resources.files("ser_worker").joinpath("data")
_CREMA_D_MANIFEST = "crema_d_manifest.tsv"
_CREMA_D_SPLITS = "crema_d_speaker_splits.json"


@dataclass(frozen=True)
class ManifestEntry:
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class ManifestReport:
    missing: list[str]
    extra: list[str]
    corrupted: list[str]
    checked: int

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.corrupted)


def crema_d_speaker_splits() -> dict[str, tuple[str, ...]]:
    """The shipped speaker-independent CREMA-D split (train/dev/test → train/val/test)."""
    raw = json.loads(_DATA.joinpath(_CREMA_D_SPLITS).read_text(encoding="utf-8"))
    return {
        ours: tuple(f"crema-d:{actor}" for actor in raw[theirs])
        for ours, theirs in (("train", "train"), ("val", "dev"), ("test", "test"))
    }


def crema_d_split(clips: Sequence[LabelledClip]) -> Split:
    """Split CREMA-D clips by the shipped actor lists (56/18/17 actors, balanced by sex,
    race and ethnicity), so results compare across runs and with other work using it."""
    if not clips:
        raise ValueError("cannot split an empty clip list")
    parts = crema_d_speaker_splits()
    part_of = {speaker: part for part, members in parts.items() for speaker in members}
    outside = sorted({str(clip.speaker) for clip in clips if clip.speaker not in part_of})
    if outside:
        shown = ", ".join(outside[:5]) + (" ..." if len(outside) > 5 else "")
        raise ValueError(f"crema_d_split needs CREMA-D clips only; other speakers: {shown}")
    sides: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    present: dict[str, set[str]] = {"train": set(), "val": set(), "test": set()}
    for index, clip in enumerate(clips):
        part = part_of[str(clip.speaker)]
        sides[part].append(index)
        present[part].add(str(clip.speaker))
    description = (
        "CREMA-D speaker-independent split shipped with ser (56/18/17 actors, stratified by "
        f"sex, race and ethnicity): {len(present['train'])}/{len(present['val'])}/"
        f"{len(present['test'])} actors present, {len(sides['train'])} train / "
        f"{len(sides['val'])} val / {len(sides['test'])} test clips"
    )
    return Split(
        tuple(sorted(sides["train"])),
        tuple(sorted(sides["val"])),
        tuple(sorted(sides["test"])),
        "crema-d",
        description,
        None,
        tuple(sorted(present["train"])),
        tuple(sorted(present["val"])),
        tuple(sorted(present["test"])),
    )


def read_crema_d_manifest(manifest: str | Path | None = None) -> dict[str, ManifestEntry]:
    """File name → expected sha256 and size; the shipped manifest of all 7442 wavs by default."""
    source = _DATA.joinpath(_CREMA_D_MANIFEST) if manifest is None else Path(manifest)
    with source.open(newline="", encoding="utf-8") as handle:
        rows = csv.DictReader(handle, delimiter="\t")
        return {
            row["filename"]: ManifestEntry(row["sha256"].lower(), int(row["size_bytes"]))
            for row in rows
        }


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def verify_crema_d(
    root: str | Path, manifest: str | Path | Mapping[str, ManifestEntry] | None = None
) -> ManifestReport:
    """Compare the audio files under `root` with the manifest by name, size and sha256.

    `missing` and `corrupted` are manifest names; `extra` are paths relative to `root` of
    audio files the manifest does not list, or second copies of a name it does.
    """
    root = Path(root)
    expected = manifest if isinstance(manifest, Mapping) else read_crema_d_manifest(manifest)
    audio, _ = find_audio_files(root)
    found: dict[str, Path] = {}
    extra: list[str] = []
    for path in audio:
        if path.name in expected and path.name not in found:
            found[path.name] = path
        else:
            extra.append(path.relative_to(root).as_posix() if root.is_dir() else path.name)
    corrupted = [
        name
        for name, path in sorted(found.items())
        # The size check first spares hashing a file already known to differ.
        if path.stat().st_size != expected[name].size_bytes
        or _sha256(path) != expected[name].sha256
    ]
    missing = sorted(set(expected) - set(found))
    return ManifestReport(missing, sorted(extra), corrupted, len(found))
