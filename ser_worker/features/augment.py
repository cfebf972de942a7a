"""The study's four waveform augmentations, seeded and length-preserving.

Every function draws all its randomness from the caller's Generator, so one seed reproduces a
whole augmented training set. Pitch and stretch run librosa's phase vocoder and cost far more
than noise and shift (docs/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Callable

import librosa
import numpy as np

from ser_worker.labels import SAMPLE_RATE

AUGMENTATIONS: tuple[str, ...] = ("noise", "shift", "pitch", "stretch")

NOISE_SCALE = 0.035  # noise std is up to this fraction of the clip's peak, as in the study
MAX_SHIFT_S = 0.5
PITCH_STEPS = (0.5, 3.0)  # |semitones|; below half a step the change is inaudible
STRETCH_RATES = (0.8, 1.25)
_MIN_STRETCH_CHANGE = 0.05


def add_noise(
    y: np.ndarray, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    amplitude = NOISE_SCALE * rng.uniform() * float(np.max(np.abs(y)))
    return (y + amplitude * rng.standard_normal(y.shape[0])).astype(np.float32)


def time_shift(
    y: np.ndarray, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    # A roll (as in the study) keeps every sample of speech; a zero-filled shift would add
    # digital silence that real recordings never contain.
    max_shift = max(1, min(int(MAX_SHIFT_S * sample_rate), y.shape[0] - 1))
    shift = int(rng.integers(1, max_shift, endpoint=True)) * (1 if rng.uniform() < 0.5 else -1)
    return np.roll(y, shift).astype(np.float32, copy=False)


def pitch_shift(
    y: np.ndarray, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    n_steps = rng.uniform(*PITCH_STEPS) * (1 if rng.uniform() < 0.5 else -1)
    shifted = librosa.effects.pitch_shift(y, sr=sample_rate, n_steps=n_steps)
    return librosa.util.fix_length(shifted, size=y.shape[0]).astype(np.float32, copy=False)


def time_stretch(
    y: np.ndarray, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    rate = 1.0
    while abs(rate - 1.0) < _MIN_STRETCH_CHANGE:
        rate = rng.uniform(*STRETCH_RATES)
    stretched = librosa.effects.time_stretch(y, rate=rate)
    # Back to the original length: a slowed clip loses its tail, a sped-up one ends in zeros.
    return librosa.util.fix_length(stretched, size=y.shape[0]).astype(np.float32, copy=False)


_FUNCTIONS: dict[str, Callable[[np.ndarray, np.random.Generator, int], np.ndarray]] = {
    "noise": add_noise,
    "shift": time_shift,
    "pitch": pitch_shift,
    "stretch": time_stretch,
}


def augment(
    y: np.ndarray, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE
) -> tuple[np.ndarray, str]:
    """Apply one augmentation chosen uniformly at random; returns (waveform, its name)."""
    name = AUGMENTATIONS[int(rng.integers(len(AUGMENTATIONS)))]
    return _FUNCTIONS[name](y, rng, sample_rate), name
