"""The denoiser experiment's front end (research.denoise)."""

from __future__ import annotations

import numpy as np
import pytest

from research.denoise import denoised
from ser_worker.bundle.manifest import CURRENT_PREPROCESSING
from ser_worker.loudness import integrated_loudness


def _rms_db(y: np.ndarray) -> float:
    return 10 * np.log10(np.mean(y.astype(np.float64) ** 2))


def test_spectral_gate_removes_the_noise_floor_keeps_the_voice_and_the_loudness():
    rng = np.random.default_rng(0)
    t = np.arange(32_000) / 16_000
    # A vowel-like harmonic tone in the second second only, white noise 30 dB under it throughout.
    voice = sum(0.3 / k * np.sin(2 * np.pi * 150 * k * t) for k in range(1, 6)) * (t >= 1.0)
    noise = rng.normal(0, 0.3 * 10 ** (-30 / 20), t.size)
    y = (voice + noise).astype(np.float32)

    out = denoised(y, "spectral-gate")

    assert out.shape == y.shape and out.dtype == np.float32
    assert integrated_loudness(out, 16_000) == pytest.approx(
        CURRENT_PREPROCESSING.loudness.target_lufs, abs=0.05
    )
    # Relative to the voice, the noise-only first second falls (by about 3 dB: the non-stationary
    # gate follows a floor that it also hears as the signal where no voice is) ...
    before = _rms_db(y[4_000:12_000]) - _rms_db(y[20_000:28_000])
    after = _rms_db(out[4_000:12_000]) - _rms_db(out[20_000:28_000])
    assert after < before - 2
    # ... and the voice itself is kept: its waveform correlates with the clean tone.
    kept = np.corrcoef(out[20_000:28_000], voice[20_000:28_000])[0, 1]
    assert kept > 0.95


def test_projected_head_ignores_the_direction_channel_copies_move_along():
    from research.denoise import projected_head
    from ser_worker.labels import EMOTIONS

    rng = np.random.default_rng(1)
    labels = [EMOTIONS[i % len(EMOTIONS)] for i in range(120)]
    centres = rng.normal(0, 1, (len(EMOTIONS), 8))
    clean = np.stack([centres[EMOTIONS.index(e)] for e in labels]) + rng.normal(0, 0.3, (120, 8))
    # Every copy moves its clip along one "channel" direction by a random amount.
    channel = np.zeros(8)
    channel[3] = 1.0
    copies = [clean + rng.normal(0, 3, (120, 1)) * channel for _ in range(2)]

    head = projected_head([clean, *copies], labels * 3, directions=1)

    moved = clean + 5.0 * channel
    assert np.allclose(head.probabilities(clean), head.probabilities(moved), atol=1e-5)
    # The rest of the vector still decides: the head reads the classes apart.
    assert np.mean(head.probabilities(clean).argmax(1) == [EMOTIONS.index(e) for e in labels]) > 0.9
