"""Shared test settings. Service-backed tests skip where Redis or PostgreSQL are absent (a laptop),
but with SER_REQUIRE_SERVICES=1 (set by .ci/run) a missing service fails the run instead."""

import os

# Keep TensorFlow quiet and predictable on a 2-core machine.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

TEST_DATA = Path(__file__).resolve().parent / "data"

# The speech-like test signal: voiced part between two stretches of digital silence.
VOICED_S = 1.5
MARGIN_S = 0.3


def speech_like(
    sample_rate: int = 16_000, voiced_s: float = VOICED_S, margin_s: float = MARGIN_S
) -> np.ndarray:
    """A 150 Hz harmonic tone, amplitude-modulated at 4 Hz like syllables, padded with silence."""
    t = np.arange(int(voiced_s * sample_rate)) / sample_rate
    nyquist = sample_rate / 2
    tone = sum(np.sin(2 * np.pi * k * 150 * t) / k for k in range(1, 20) if k * 150 < 0.9 * nyquist)
    envelope = 0.1 + 0.9 * 0.5 * (1 - np.cos(2 * np.pi * 4 * t))
    voiced = 0.3 * tone / np.max(np.abs(tone)) * envelope
    margin = np.zeros(int(margin_s * sample_rate))
    return np.concatenate([margin, voiced, margin]).astype(np.float32)


@pytest.fixture
def make_speech() -> Callable[..., np.ndarray]:
    return speech_like


@pytest.fixture(scope="session")
def real_clips() -> list[Path]:
    clips = sorted(TEST_DATA.glob("*/*/*.flac"))
    assert len(clips) == 12, f"expected the 12 committed clips under {TEST_DATA}"
    return clips
