"""Labelled speech corpora: file-name and layout adapters (``names``), loading (``corpus``),
train/val/test splits (``splits``) and the shipped CREMA-D split and manifest (``crema_d``).

Only the standard library and numpy are imported here because `ser-cli` uses this package to
inspect datasets without loading librosa or Keras.
"""

from ser_worker.datasets.corpus import (
    Dataset,
    LabelledClip,
    load_csv,
    load_dataset,
    tess_thinned_out,
)
from ser_worker.datasets.crema_d import (
    ManifestEntry,
    ManifestReport,
    crema_d_speaker_splits,
    crema_d_split,
    read_crema_d_manifest,
    verify_crema_d,
)
from ser_worker.datasets.names import (
    AUDIO_EXTENSIONS,
    NOT_AUDIO,
    SCHEMES,
    UNRECOGNISED,
    ClipLabel,
    find_audio_files,
    label_for_path,
    parse_crema_d,
    parse_folder,
    parse_ravdess,
    parse_tess,
)
from ser_worker.datasets.splits import Split, random_split, speaker_folds, speaker_split

__all__ = [
    "AUDIO_EXTENSIONS",
    "NOT_AUDIO",
    "SCHEMES",
    "UNRECOGNISED",
    "ClipLabel",
    "Dataset",
    "LabelledClip",
    "ManifestEntry",
    "ManifestReport",
    "Split",
    "crema_d_speaker_splits",
    "crema_d_split",
    "find_audio_files",
    "label_for_path",
    "load_csv",
    "load_dataset",
    "parse_crema_d",
    "parse_folder",
    "parse_ravdess",
    "parse_tess",
    "random_split",
    "read_crema_d_manifest",
    "speaker_folds",
    "speaker_split",
    "tess_thinned_out",
    "verify_crema_d",
]
