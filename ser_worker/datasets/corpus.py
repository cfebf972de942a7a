"""A labelled corpus on disk: every clip under a folder, or listed in a label CSV, with counts of
what was skipped and why."""

from __future__ import annotations

import csv
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ser_worker.datasets.names import (
    NOT_AUDIO,
    SCHEMES,
    UNRECOGNISED,
    emotion_from_word,
    find_audio_files,
    is_audio,
    label_for_path,
)
from ser_worker.labels import EMOTIONS


@dataclass(frozen=True)
class LabelledClip:
    path: Path
    emotion: str
    speaker: str | None
    corpus: str


@dataclass
class Dataset:
    clips: list[LabelledClip]
    skipped: Counter[str]

    def summary(self) -> dict[str, Any]:
        emotions = Counter(clip.emotion for clip in self.clips)
        corpora = Counter(clip.corpus for clip in self.clips)
        speakers = Counter(clip.speaker or "unknown" for clip in self.clips)
        return {
            "clips": len(self.clips),
            "emotions": {code: emotions[code] for code in EMOTIONS},
            "corpora": dict(sorted(corpora.items())),
            "speakers": dict(sorted(speakers.items())),
            "skipped": dict(sorted(self.skipped.items())),
        }


def _csv_header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), [])
    return [cell.strip().lower() for cell in header]


def _is_label_csv(path: Path) -> bool:
    try:
        header = _csv_header(path)
    except UnicodeDecodeError:
        # Corpus folders carry their own metadata CSVs in other encodings; those are not ours.
        return False
    return {"path", "label"} <= set(header)


def load_csv(csv_path: str | Path) -> Dataset:
    """Clips listed in a CSV with columns path,label[,speaker]; paths relative to its folder."""
    csv_path = Path(csv_path)
    if not _is_label_csv(csv_path):
        raise ValueError(f"{csv_path} needs a header with columns path,label[,speaker]")
    clips: list[LabelledClip] = []
    skipped: Counter[str] = Counter()
    seen: set[Path] = set()
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        rows = csv.reader(handle)
        header = [cell.strip().lower() for cell in next(rows)]
        for cells in rows:
            if not any(cell.strip() for cell in cells):
                continue
            row = dict(zip(header, cells, strict=False))
            path = csv_path.parent / (row.get("path") or "").strip()
            label = emotion_from_word(row.get("label") or "", "csv")
            if path in seen:
                skipped["duplicate CSV row"] += 1
            elif not is_audio(path):
                skipped[NOT_AUDIO] += 1
            elif not path.is_file():
                skipped["file listed in CSV is missing"] += 1
            elif label.emotion is None:
                skipped[label.skip_reason or UNRECOGNISED] += 1
            else:
                speaker = (row.get("speaker") or "").strip() or None
                clips.append(LabelledClip(path, label.emotion, speaker, "csv"))
            seen.add(path)
    return Dataset(clips, skipped)


def _label_csvs(root: Path) -> list[Path]:
    return sorted(
        path
        for path in root.iterdir()
        if path.is_file() and path.suffix.lower() == ".csv" and _is_label_csv(path)
    )


def load_dataset(root: str | Path, scheme: str = "auto") -> Dataset:
    """Every labelled clip under `root`, with counts of what was skipped and why.

    With "auto" or "csv", a CSV directly in `root` whose header has path and label columns is
    the source of labels; other CSVs (e.g. CREMA-D's summaryTable.csv) are ignored.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown labelling scheme {scheme!r}; choose one of {SCHEMES}")
    if scheme == "none":
        raise ValueError("scheme 'none' labels nothing; load_dataset needs a labelling scheme")
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"no such file or folder: {root}")
    if root.is_file() and root.suffix.lower() == ".csv":
        if scheme not in ("auto", "csv"):
            raise ValueError(f"{root} is a CSV; use scheme 'csv' or 'auto'")
        return load_csv(root)
    if scheme in ("auto", "csv") and root.is_dir():
        tables = _label_csvs(root)
        if len(tables) > 1:
            names = ", ".join(path.name for path in tables)
            raise ValueError(f"several label CSVs in {root} ({names}); pass one of them")
        if tables:
            return load_csv(tables[0])
    if scheme == "csv":
        raise ValueError(f"no CSV with path,label columns directly in {root}")

    audio, other = find_audio_files(root)
    clips: list[LabelledClip] = []
    skipped: Counter[str] = Counter()
    if other:
        skipped[NOT_AUDIO] = len(other)
    for path in audio:
        label = label_for_path(path, scheme)
        if label.emotion is None or label.corpus is None:
            skipped[label.skip_reason or UNRECOGNISED] += 1
        else:
            clips.append(LabelledClip(path, label.emotion, label.speaker, label.corpus))
    return Dataset(clips, skipped)


def tess_thinned_out(clips: Sequence[LabelledClip], every: int) -> set[int]:
    """Indices of the TESS clips left out when keeping every n-th of each speaker and emotion.

    TESS repeats the same 200 words for every speaker and emotion, so 1 in n of them keeps the
    variety at a fraction of the cost. Clips of other corpora are never left out.
    """
    seen: Counter[tuple[str | None, str]] = Counter()
    left_out = set()
    for i, clip in enumerate(clips):
        if clip.corpus != "tess":
            continue
        key = (clip.speaker, clip.emotion)
        if seen[key] % every:
            left_out.add(i)
        seen[key] += 1
    return left_out
