"""The training set on disk: features once, augmented copies written to ``np.memmap`` files.

Memory stays flat however many augmented copies are requested: the training inputs of all
originals and copies are written once under ``cache_dir`` and each training step reads only its
batch (see ``batches``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ser_worker.features import augment as augment_module
from ser_worker.features.study import (
    ClipFeatures,
    FeatureSettings,
    Normalizer,
    extract,
    input_1d,
    input_2d,
)
from ser_worker.labels import EMOTIONS
from ser_worker.training.config import Progress

# The stored 2D width is capped so that one very long clip cannot blow up the cache of every
# clip; beyond twice the model window the extra context adds little crop variety.
MAX_STORED_WIDTH_FACTOR = 2


def extract_all(waveforms: Sequence[np.ndarray], settings: FeatureSettings) -> list[ClipFeatures]:
    return [extract(np.asarray(y, dtype=np.float32), settings) for y in waveforms]


def label_indices(labels: Sequence[str]) -> np.ndarray:
    index = {code: i for i, code in enumerate(EMOTIONS)}
    unknown = sorted({code for code in labels if code not in index})
    if unknown:
        raise ValueError(f"labels not in {list(EMOTIONS)}: {unknown}")
    return np.array([index[code] for code in labels], dtype=np.int32)


def balanced_class_weights(y: np.ndarray, n_classes: int = len(EMOTIONS)) -> np.ndarray:
    """n / (k * count_c) over the k classes present (sklearn's "balanced"); absent classes get 1."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(n_classes)
    weights[present] = len(y) / (present.sum() * counts[present])
    return weights


@dataclass
class TrainingCache:
    """Training-set inputs on disk: originals first, then their augmented copies."""

    x1: np.ndarray  # memmap (N, 2 * seq_frames, 1) float32
    mel: np.ndarray  # memmap (N, n_mels, width, 1) float32, clip centred, zero padded
    lengths: np.ndarray  # (N,) frames of real signal inside the stored width
    y: np.ndarray  # (N,) class indices
    width: int


def build_cache(
    features: Sequence[ClipFeatures],
    y: np.ndarray,
    normalizer: Normalizer,
    settings: FeatureSettings,
    cache_dir: Path,
    *,
    copies: Sequence[Iterable[ClipFeatures]] = (),
    progress: Progress | None = None,
) -> TrainingCache:
    """Write the inputs of every original and of each augmented copy to memmaps.

    Each element of `copies` yields the features of one augmented version of every original,
    in the same order; they are consumed one clip at a time so RAM never holds them all.
    The mel image is stored wider than the model window (up to the longest clip, capped) in
    the input_2d layout, so a crop of it equals input_2d at the same offset for every clip that
    fits the stored width; longer clips keep their centred part.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    longest = max(f.n_frames for f in features)
    # Rounded up because FeatureSettings only accepts 2D widths that are multiples of 16.
    width = _round_up(
        min(max(longest, settings.mel_frames), MAX_STORED_WIDTH_FACTOR * settings.mel_frames), 16
    )
    wide = replace(settings, mel_frames=width)
    n_originals = len(features)
    n = n_originals * (1 + len(copies))
    x1 = np.lib.format.open_memmap(
        cache_dir / "train_x1.npy",
        mode="w+",
        dtype=np.float32,
        shape=(n, settings.input_length_1d, 1),
    )
    mel = np.lib.format.open_memmap(
        cache_dir / "train_mel.npy",
        mode="w+",
        dtype=np.float32,
        shape=(n, settings.n_mels, width, 1),
    )
    lengths = np.empty(n, dtype=np.int32)

    def write(i: int, clip: ClipFeatures) -> None:
        x1[i] = input_1d(clip, settings, normalizer)
        mel[i] = input_2d(clip, wide, normalizer)
        lengths[i] = min(clip.n_frames, width)

    for i, clip in enumerate(features):
        write(i, clip)
    for number, copy in enumerate(copies):
        if progress:
            progress(f"augmenting: copy {number + 1}/{len(copies)} of {n_originals} clips")
        written = 0
        for i, clip in enumerate(copy):
            write(n_originals * (1 + number) + i, clip)
            written += 1
        if written != n_originals:
            raise ValueError(f"augmented copy {number} has {written} clips, not {n_originals}")
    x1.flush()
    mel.flush()
    # Reopened read-only: batches page in from disk and the OS may evict them again.
    return TrainingCache(
        x1=np.load(cache_dir / "train_x1.npy", mmap_mode="r"),
        mel=np.load(cache_dir / "train_mel.npy", mmap_mode="r"),
        lengths=lengths,
        y=np.tile(y, 1 + len(copies)),
        width=width,
    )


def augmented_copy(
    waveforms: Sequence[np.ndarray], settings: FeatureSettings, rng: np.random.Generator
) -> Iterator[ClipFeatures]:
    """Features of one augmented version of each waveform, computed as they are consumed."""
    for waveform in waveforms:
        augmented, _kind = augment_module.augment(
            np.asarray(waveform, dtype=np.float32), rng, sample_rate=settings.sample_rate
        )
        yield extract(augmented, settings)


def augmented_copies(
    waveforms: Sequence[np.ndarray], settings: FeatureSettings, count: int, seed: int
) -> list[Iterator[ClipFeatures]]:
    """`count` lazy copies (see build_cache) drawn from one Generator, copy after copy."""
    rng = np.random.default_rng(seed)
    return [augmented_copy(waveforms, settings, rng) for _ in range(count)]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
