"""Labelled speech corpora: file-name and layout adapters, train/val/test splits, CREMA-D checks.

Only the standard library and numpy are imported here because `ser-cli` uses this module to
inspect datasets without loading librosa or Keras.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ser_worker.labels import EMOTIONS

SCHEMES: tuple[str, ...] = ("auto", "crema-d", "ravdess", "tess", "folder", "csv", "none")
AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg", ".mp3")

NOT_AUDIO = "not an audio file"
UNRECOGNISED = "unrecognised name"

_CREMA_D_NAME = re.compile(
    r"^(?P<actor>1\d{3})_(?P<sentence>[A-Z]{3})_(?P<emotion>ANG|DIS|FEA|HAP|NEU|SAD)"
    r"_(?P<level>LO|MD|HI|XX)$"
)
# Every field is restricted to the values RAVDESS defines, so an unrelated name built from
# two-digit numbers is not taken for a RAVDESS clip.
_RAVDESS_NAME = re.compile(
    r"^(?P<modality>0[1-3])-(?P<channel>0[12])-(?P<emotion>0[1-8])-(?P<intensity>0[12])"
    r"-(?P<statement>0[12])-(?P<repetition>0[12])-(?P<actor>0[1-9]|1\d|2[0-4])$"
)
# "OA" is the one source quirk: OAF_neutral/OA_bite_neutral.flac.
_TESS_NAME = re.compile(
    r"^(?P<speaker>OAF|YAF|OA)_(?P<word>[a-z]+)"
    r"_(?P<emotion>angry|disgust|fear|happy|neutral|sad|ps)$",
    re.IGNORECASE,
)

_RAVDESS_EMOTIONS: dict[str, str | None] = {
    "01": "NEU",
    "02": None,  # calm
    "03": "HAP",
    "04": "SAD",
    "05": "ANG",
    "06": "FEA",
    "07": "DIS",
    "08": None,  # surprised
}
_RAVDESS_NAMES = {
    "01": "neutral",
    "02": "calm",
    "03": "happy",
    "04": "sad",
    "05": "angry",
    "06": "fearful",
    "07": "disgust",
    "08": "surprised",
}
_TESS_EMOTIONS = {
    "angry": "ANG",
    "disgust": "DIS",
    "fear": "FEA",
    "happy": "HAP",
    "neutral": "NEU",
    "sad": "SAD",
}
_EMOTION_ALIASES: dict[str, str] = {
    **{code.lower(): code for code in EMOTIONS},
    "angry": "ANG",
    "anger": "ANG",
    "disgust": "DIS",
    "disgusted": "DIS",
    "fear": "FEA",
    "fearful": "FEA",
    "happy": "HAP",
    "happiness": "HAP",
    "neutral": "NEU",
    "sad": "SAD",
    "sadness": "SAD",
}
# Emotions other corpora annotate that CREMA-D does not: recognised so they are reported as
# deliberately left out rather than as unknown folder names or typos.
_OTHER_EMOTIONS = frozenset(
    {
        "calm",
        "surprise",
        "surprised",
        "ps",
        "pleasant_surprise",
        "pleasant_surprised",
        "boredom",
        "bored",
        "contempt",
    }
)

_DATA = resources.files("ser_worker").joinpath("data")
_CREMA_D_MANIFEST = "crema_d_manifest.tsv"
_CREMA_D_SPLITS = "crema_d_speaker_splits.json"


@dataclass(frozen=True)
class ClipLabel:
    emotion: str | None
    speaker: str | None
    corpus: str | None
    skip_reason: str | None


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


@dataclass(frozen=True)
class Split:
    """Indices into the clip list the split was made from."""

    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...]
    protocol: str
    description: str
    seed: int | None = None
    train_speakers: tuple[str, ...] = ()
    val_speakers: tuple[str, ...] = ()
    test_speakers: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "description": self.description,
            "seed": self.seed,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "train_speakers": list(self.train_speakers),
            "val_speakers": list(self.val_speakers),
            "test_speakers": list(self.test_speakers),
        }


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


# --- labels from file names and folders -------------------------------------------------------


def _unrecognised(corpus: str) -> ClipLabel:
    return ClipLabel(None, None, None, f"not a {corpus} name")


def _skip(corpus: str, reason: str, speaker: str | None = None) -> ClipLabel:
    return ClipLabel(None, speaker, corpus, reason)


def _emotion_from_word(word: str, source: str) -> ClipLabel:
    """Map a free-text label (folder name or CSV cell) to a code, or say why it has none."""
    key = re.sub(r"[\s-]+", "_", word.strip().lower())
    if key in _EMOTION_ALIASES:
        return ClipLabel(_EMOTION_ALIASES[key], None, source, None)
    if key in _OTHER_EMOTIONS:
        return _skip(source, f"{source} label {key!r} has no CREMA-D class")
    return ClipLabel(None, None, None, f"{source} label {word!r} is not an emotion")


def parse_crema_d(path: str | Path) -> ClipLabel:
    match = _CREMA_D_NAME.match(Path(path).stem)
    if match is None:
        return _unrecognised("crema-d")
    return ClipLabel(match["emotion"], f"crema-d:{match['actor']}", "crema-d", None)


def parse_ravdess(path: str | Path) -> ClipLabel:
    match = _RAVDESS_NAME.match(Path(path).stem)
    if match is None:
        return _unrecognised("ravdess")
    speaker = f"ravdess:{match['actor']}"
    if match["modality"] != "03":
        return _skip("ravdess", f"ravdess modality {match['modality']} is not audio-only", speaker)
    if match["channel"] != "01":
        return _skip("ravdess", "ravdess song (vocal channel 02), not speech", speaker)
    emotion = _RAVDESS_EMOTIONS[match["emotion"]]
    if emotion is None:
        name = _RAVDESS_NAMES[match["emotion"]]
        return _skip("ravdess", f"ravdess label {name!r} has no CREMA-D class", speaker)
    return ClipLabel(emotion, speaker, "ravdess", None)


def parse_tess(path: str | Path) -> ClipLabel:
    match = _TESS_NAME.match(Path(path).stem)
    if match is None:
        return _unrecognised("tess")
    prefix = match["speaker"].upper()
    speaker = "tess:" + ("OAF" if prefix == "OA" else prefix)
    word = match["emotion"].lower()
    if word == "ps":
        return _skip("tess", "tess label 'ps' (pleasant surprise) has no CREMA-D class", speaker)
    return ClipLabel(_TESS_EMOTIONS[word], speaker, "tess", None)


def parse_folder(path: str | Path) -> ClipLabel:
    """Label from the name of the folder directly above the file; the speaker is unknown."""
    return _emotion_from_word(Path(path).parent.name, "folder")


def _is_audio(path: Path) -> bool:
    return path.suffix.lower() in AUDIO_EXTENSIONS


def label_for_path(path: str | Path, scheme: str = "auto") -> ClipLabel:
    """Label one clip from its path.

    "auto" tries the strict CREMA-D, RAVDESS and TESS name patterns, then the parent folder; a
    name no pattern fully matches is never guessed at. "none" marks an unlabelled clip. CSV
    labels live in the CSV, not the path: use `load_dataset` for them.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown labelling scheme {scheme!r}; choose one of {SCHEMES}")
    if scheme == "csv":
        raise ValueError("CSV labels come from the CSV file: use load_dataset(root, 'csv')")
    path = Path(path)
    if not _is_audio(path):
        return ClipLabel(None, None, None, NOT_AUDIO)
    if scheme == "none":
        return ClipLabel(None, None, None, None)
    if scheme != "auto":
        return _PARSERS[scheme](path)
    for parse in (parse_crema_d, parse_ravdess, parse_tess, parse_folder):
        label = parse(path)
        if label.corpus is not None:
            return label
    return ClipLabel(None, None, None, UNRECOGNISED)


_PARSERS = {
    "crema-d": parse_crema_d,
    "ravdess": parse_ravdess,
    "tess": parse_tess,
    "folder": parse_folder,
}


# --- walking and loading ------------------------------------------------------------------


def find_audio_files(root: str | Path) -> tuple[list[Path], list[Path]]:
    """Audio files under `root` (sorted) and every other file met on the way (sorted).

    Hidden files and folders are not audio: macOS copies leave `._name.wav` resource forks
    beside real clips, and `.git` trees can be huge.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"no such file or folder: {root}")
    if not root.is_dir():
        return ([root], []) if _is_audio(root) else ([], [root])
    audio: list[Path] = []
    other: list[Path] = []

    def unreadable_folder(error: OSError) -> None:
        # Reported with the other skipped paths instead of vanishing without a word.
        other.append(Path(error.filename))

    # followlinks=False: a symlink pointing back up the tree would otherwise recurse forever.
    for folder, dirnames, filenames in os.walk(root, onerror=unreadable_folder, followlinks=False):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        for name in filenames:
            path = Path(folder, name)
            # A FIFO or dangling link named .wav is still the user's clip: reading it fails
            # later with a clear "unreadable" error rather than "not audio".
            wanted = not name.startswith(".") and _is_audio(path)
            (audio if wanted else other).append(path)
    return sorted(audio), sorted(other)


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
            label = _emotion_from_word(row.get("label") or "", "csv")
            if path in seen:
                skipped["duplicate CSV row"] += 1
            elif not _is_audio(path):
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


# --- splits -------------------------------------------------------------------------------


def _check_fractions(test_fraction: float, val_fraction: float) -> None:
    if not (0 <= test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise ValueError(
            "need 0 <= test_fraction, 0 <= val_fraction and test_fraction + val_fraction < 1; "
            f"got {test_fraction} and {val_fraction}"
        )


def _stratified_take(
    indices: Iterable[int],
    clips: Sequence[LabelledClip],
    fraction: float,
    rng: np.random.Generator,
) -> tuple[list[int], list[int]]:
    """Take `fraction` of each emotion's clips (rounded per emotion); return (taken, rest)."""
    by_emotion: dict[str, list[int]] = {}
    for index in sorted(indices):
        by_emotion.setdefault(clips[index].emotion, []).append(index)
    taken: list[int] = []
    rest: list[int] = []
    for emotion in sorted(by_emotion):
        members = by_emotion[emotion]
        order = rng.permutation(len(members))
        count = round(len(members) * fraction)
        taken.extend(members[i] for i in order[:count])
        rest.extend(members[i] for i in order[count:])
    return taken, rest


def _indices(indices: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted(indices))


def random_split(
    clips: Sequence[LabelledClip],
    *,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Split:
    """Clip-level split stratified by emotion; fractions are of all clips.

    This is the study's protocol: the same speakers appear in train, val and test.
    """
    if not clips:
        raise ValueError("cannot split an empty clip list")
    _check_fractions(test_fraction, val_fraction)
    rng = np.random.default_rng(seed)
    test, rest = _stratified_take(range(len(clips)), clips, test_fraction, rng)
    val, train = _stratified_take(rest, clips, val_fraction / (1 - test_fraction), rng)
    description = (
        f"clip-level random split stratified by emotion (seed {seed}): "
        f"{len(train)} train / {len(val)} val / {len(test)} test clips; the same speakers "
        "are on every side, so scores overstate accuracy on unseen speakers"
    )
    return Split(_indices(train), _indices(val), _indices(test), "random", description, seed)


def _speakers(clips: Sequence[LabelledClip]) -> list[str]:
    unknown = sum(clip.speaker is None for clip in clips)
    if unknown:
        raise ValueError(
            f"a speaker split needs the speaker of every clip, and {unknown} of {len(clips)} "
            "clips have none; use random_split, or a CSV with a speaker column"
        )
    speakers = sorted({clip.speaker for clip in clips if clip.speaker is not None})
    if len(speakers) < 2:
        raise ValueError(f"a speaker split needs at least 2 speakers; found {len(speakers)}")
    return speakers


def speaker_split(
    clips: Sequence[LabelledClip],
    *,
    test_speakers: Iterable[str] | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Split:
    """Speaker-independent split: no speaker is on both sides of train and test.

    Without `test_speakers`, round(test_fraction * speakers) of them (at least one) are drawn
    for test. Validation speakers are drawn from the training speakers when at least 3 remain;
    otherwise validation is a stratified clip-level carve from the training clips, and the
    description says so because those validation scores are then optimistic.
    """
    if not clips:
        raise ValueError("cannot split an empty clip list")
    _check_fractions(test_fraction, val_fraction)
    speakers = _speakers(clips)
    rng = np.random.default_rng(seed)
    if test_speakers is None:
        count = min(max(1, round(len(speakers) * test_fraction)), len(speakers) - 1)
        chosen = [speakers[i] for i in rng.permutation(len(speakers))[:count]]
    else:
        chosen = sorted(set(test_speakers))
        unknown = sorted(set(chosen) - set(speakers))
        if unknown:
            raise ValueError(f"test speakers not in the clips: {', '.join(unknown)}")
        if not chosen or len(chosen) == len(speakers):
            raise ValueError("test speakers must be some, but not all, of the speakers")
    test_set = set(chosen)
    remaining = [speaker for speaker in speakers if speaker not in test_set]

    test = [i for i, clip in enumerate(clips) if clip.speaker in test_set]
    train_pool = [i for i, clip in enumerate(clips) if clip.speaker not in test_set]
    val_set: set[str] = set()
    if val_fraction == 0:
        val: list[int] = []
        train = train_pool
        val_note = "no validation set"
    elif len(remaining) >= 3:
        count = min(max(1, round(len(speakers) * val_fraction)), len(remaining) - 1)
        val_set = {remaining[i] for i in rng.permutation(len(remaining))[:count]}
        val = [i for i in train_pool if clips[i].speaker in val_set]
        train = [i for i in train_pool if clips[i].speaker not in val_set]
        val_note = f"validation speakers {', '.join(sorted(val_set))}"
    else:
        share = val_fraction * len(clips) / len(train_pool)
        if share >= 1:
            raise ValueError(f"val_fraction {val_fraction} leaves no training clips")
        val, train = _stratified_take(train_pool, clips, share, rng)
        val_note = (
            f"validation is a stratified clip-level carve from the {len(remaining)} training "
            "speaker(s), too few to hold speakers out, so validation scores are optimistic"
        )
    train_speakers = tuple(s for s in remaining if s not in val_set)
    description = (
        f"speaker-independent split (seed {seed}): test speakers {', '.join(sorted(chosen))}; "
        f"{val_note}; {len(train)} train / {len(val)} val / {len(test)} test clips"
    )
    return Split(
        _indices(train),
        _indices(val),
        _indices(test),
        "speaker",
        description,
        seed,
        train_speakers,
        tuple(sorted(val_set)),
        tuple(sorted(chosen)),
    )


def speaker_folds(
    clips: Sequence[LabelledClip],
    n_folds: int = 5,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> list[Split]:
    """Speaker-grouped cross-validation: each speaker is a test speaker in exactly one fold.

    Speakers are shuffled and dealt into `n_folds` groups of near-equal size (RAVDESS: 20
    actors, 5 folds of 4); each fold's validation follows the `speaker_split` rule.
    """
    speakers = _speakers(clips)
    if not 2 <= n_folds <= len(speakers):
        raise ValueError(f"n_folds must be between 2 and the {len(speakers)} speakers")
    rng = np.random.default_rng(seed)
    shuffled = [speakers[i] for i in rng.permutation(len(speakers))]
    groups = [shuffled[k::n_folds] for k in range(n_folds)]
    folds = []
    for k, group in enumerate(groups):
        split = speaker_split(clips, test_speakers=group, val_fraction=val_fraction, seed=seed + k)
        folds.append(
            replace(
                split,
                protocol="speaker-fold",
                description=f"fold {k + 1} of {n_folds}: {split.description}",
                seed=seed,
            )
        )
    return folds


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
        _indices(sides["train"]),
        _indices(sides["val"]),
        _indices(sides["test"]),
        "crema-d",
        description,
        None,
        tuple(sorted(present["train"])),
        tuple(sorted(present["val"])),
        tuple(sorted(present["test"])),
    )


# --- CREMA-D copy verification --------------------------------------------------------------


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
