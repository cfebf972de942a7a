from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ser_worker.audio import load_audio
from ser_worker.features.augment import (
    AUGMENTATIONS,
    MAX_SHIFT_S,
    add_noise,
    augment,
    pitch_shift,
    time_shift,
    time_stretch,
)

SR = 16_000
FUNCTIONS = [add_noise, time_shift, pitch_shift, time_stretch]


@pytest.fixture(scope="module")
def clip(real_clips: list[Path]) -> np.ndarray:
    return load_audio(real_clips[0])


def sine(hz: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def peak_hz(y: np.ndarray) -> float:
    # Skip the edges, where stretch and pitch leave their onset and tail.
    middle = y[len(y) // 4 : 3 * len(y) // 4]
    spectrum = np.abs(np.fft.rfft(middle * np.hanning(len(middle))))
    return float(np.argmax(spectrum) * SR / len(middle))


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.__name__)
def test_keeps_length_and_dtype(fn: Callable, clip: np.ndarray) -> None:
    for seed in range(3):
        out = fn(clip, np.random.default_rng(seed), SR)
        assert out.shape == clip.shape and out.dtype == np.float32
        assert np.all(np.isfinite(out))
        assert not np.array_equal(out, clip)


@pytest.mark.parametrize("fn", FUNCTIONS, ids=lambda f: f.__name__)
def test_seeded(fn: Callable, clip: np.ndarray) -> None:
    a = fn(clip, np.random.default_rng(42), SR)
    b = fn(clip, np.random.default_rng(42), SR)
    c = fn(clip, np.random.default_rng(43), SR)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_noise_is_scaled_to_the_peak() -> None:
    y = sine(300)
    for seed in range(5):
        residual = add_noise(y, np.random.default_rng(seed), SR) - y
        # std is at most 0.035 * peak (0.5); allow the Gaussian's sample spread.
        assert residual.std() <= 0.035 * 0.5 * 1.05


def test_shift_is_a_roll_within_half_a_second() -> None:
    y = np.random.default_rng(0).standard_normal(2 * SR).astype(np.float32)
    shifts = set()
    for seed in range(20):
        out = time_shift(y, np.random.default_rng(seed), SR)
        (shift,) = np.flatnonzero(out == y[0])
        shift = shift if shift <= len(y) // 2 else shift - len(y)
        np.testing.assert_array_equal(out, np.roll(y, shift))
        assert 0 < abs(shift) <= MAX_SHIFT_S * SR
        shifts.add(np.sign(shift))
    assert shifts == {-1, 1}


def test_pitch_moves_the_frequency() -> None:
    y = sine(440)
    for seed in range(3):
        hz = peak_hz(pitch_shift(y, np.random.default_rng(seed), SR))
        ratio = hz / 440
        # Between half a semitone and three semitones, up or down.
        assert 2 ** (0.4 / 12) <= max(ratio, 1 / ratio) <= 2 ** (3.1 / 12)


def test_stretch_keeps_the_frequency() -> None:
    for seed in range(3):
        out = time_stretch(sine(440), np.random.default_rng(seed), SR)
        assert peak_hz(out) == pytest.approx(440, rel=0.02)


def test_stretch_moves_the_content() -> None:
    y = np.concatenate([np.zeros(SR // 2, np.float32), sine(440, 0.5)])
    for seed in range(3):
        out = time_stretch(y, np.random.default_rng(seed), SR)
        onset = np.flatnonzero(np.abs(out) > 0.1)[0]
        # rate is at least 5% away from 1, so the onset at 0.5 s moves by at least ~24 ms.
        assert abs(onset - SR // 2) > 0.01 * SR


def test_augment_picks_each_kind(clip: np.ndarray) -> None:
    outputs = {}
    for seed in range(24):
        out, name = augment(clip, np.random.default_rng(seed), SR)
        assert name in AUGMENTATIONS and out.shape == clip.shape
        outputs[name] = (seed, out)
    assert set(outputs) == set(AUGMENTATIONS)
    for name, (seed, out) in outputs.items():
        again, again_name = augment(clip, np.random.default_rng(seed), SR)
        assert again_name == name
        np.testing.assert_array_equal(again, out)
