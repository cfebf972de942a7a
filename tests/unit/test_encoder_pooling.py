"""How a clip's encoder frames become one vector (ser_worker.models.encoder.pooling)."""

from __future__ import annotations

import numpy as np
import pytest

from ser_worker.labels import POOL_ALL, POOL_ALL_SOFT
from ser_worker.models.encoder import ENCODER_WIDTH, LAYERS, embedding_size
from ser_worker.models.encoder.pooling import (
    ENCODER_FRAME_S,
    SOFT_FLOOR,
    check_pooling,
    pool,
    pooled,
    speech_weights,
)


def test_equal_weights_pool_as_the_bundles_before_and_zero_weights_drop_frames():
    frames = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    np.testing.assert_allclose(pool(frames, np.ones(50)), pool(frames), atol=1e-5)
    mask = np.zeros(50)
    mask[10:30] = 1.0
    np.testing.assert_allclose(pool(frames, mask), pool(frames[10:30]), atol=1e-5)
    assert not np.allclose(pool(frames, mask), pool(frames), atol=1e-2)


def test_each_encoder_frame_takes_the_detector_frame_under_its_centre():
    # Encoder frames of 20 ms against detector frames of 32 ms: centres 10, 30, 50, 70 ms.
    assert ENCODER_FRAME_S == pytest.approx(0.02)
    weights = speech_weights(np.array([0.0, 1.0], np.float32), 4, 0.032)
    np.testing.assert_allclose(weights, [SOFT_FLOOR, SOFT_FLOOR, 1 + SOFT_FLOOR, 1 + SOFT_FLOOR])
    # The encoder's last frames may lie past the detector's: they take its last frame.
    np.testing.assert_allclose(speech_weights(np.array([0.5], np.float32), 3, 0.032), 0.5 + 0.001)
    np.testing.assert_array_equal(speech_weights(np.zeros(0, np.float32), 3, 0.032), np.ones(3))


def test_all_soft_puts_the_weighted_statistics_after_the_plain_ones(monkeypatch):
    # Speech in the first half of a 1 s clip, by the detector's say.
    detector = np.r_[np.ones(16), np.zeros(16)].astype(np.float32)
    monkeypatch.setattr("ser_worker.segments.frame_probabilities", lambda signal: detector)
    rng = np.random.default_rng(1)
    blocks = [rng.normal(size=(50, 4)).astype(np.float32) for _ in LAYERS]
    signal = np.zeros(16000, np.float32)

    plain = pooled(blocks, POOL_ALL, signal)
    both = pooled(blocks, POOL_ALL_SOFT, signal)

    np.testing.assert_array_equal(both[: plain.size], plain)
    # 16 detector frames reach 0.512 s: the encoder frames centred before it (0-25) are speech.
    speech = np.concatenate([pool(b[:26]) for b in blocks])
    np.testing.assert_allclose(both[plain.size :], speech, atol=2e-3)


def test_the_size_doubles_with_the_soft_half_and_unknown_poolings_are_refused():
    assert embedding_size(LAYERS, POOL_ALL) == 2 * ENCODER_WIDTH * len(LAYERS)
    assert embedding_size(LAYERS, POOL_ALL_SOFT) == 2 * embedding_size(LAYERS, POOL_ALL)
    with pytest.raises(ValueError, match="pooling"):
        check_pooling("speech")
