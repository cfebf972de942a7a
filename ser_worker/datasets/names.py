"""Labels from corpus file names and folders: the strict CREMA-D, RAVDESS and TESS name patterns,
emotion words in folder names and CSV cells, and the walk that finds audio files."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

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


@dataclass(frozen=True)
class ClipLabel:
    emotion: str | None
    speaker: str | None
    corpus: str | None
    skip_reason: str | None


def _unrecognised(corpus: str) -> ClipLabel:
    return ClipLabel(None, None, None, f"not a {corpus} name")


def _skip(corpus: str, reason: str, speaker: str | None = None) -> ClipLabel:
    return ClipLabel(None, speaker, corpus, reason)


def emotion_from_word(word: str, source: str) -> ClipLabel:
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
    return emotion_from_word(Path(path).parent.name, "folder")


def is_audio(path: Path) -> bool:
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
    if not is_audio(path):
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


def find_audio_files(root: str | Path) -> tuple[list[Path], list[Path]]:
    """Audio files under `root` (sorted) and every other file met on the way (sorted).

    Hidden files and folders are not audio: macOS copies leave `._name.wav` resource forks
    beside real clips, and `.git` trees can be huge.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"no such file or folder: {root}")
    if not root.is_dir():
        return ([root], []) if is_audio(root) else ([], [root])
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
            wanted = not name.startswith(".") and is_audio(path)
            (audio if wanted else other).append(path)
    return sorted(audio), sorted(other)
