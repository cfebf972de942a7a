"""The speech-frame pooling experiment's pure parts (research.speech_pooling)."""

from __future__ import annotations

import numpy as np

from research import speech_pooling
from ser_worker.models.encoder.encoder import pool
from ser_worker.segments import FRAME


def test_pooling_with_equal_weights_is_the_bundles_pooling_and_zero_weights_drop_frames():
    frames = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    assert np.allclose(speech_pooling.pooled(frames, np.ones(50)), pool(frames), atol=1e-5)
    mask = np.zeros(50)
    mask[10:30] = 1.0
    assert np.allclose(speech_pooling.pooled(frames, mask), pool(frames[10:30]), atol=1e-5)


def test_speech_weights_map_detector_frames_onto_encoder_frames_and_widen_by_the_pad(
    monkeypatch,
):
    # 20 detector frames of 32 ms, speech in frames 8-11 (0.256-0.384 s).
    probabilities = np.zeros(20, np.float32)
    probabilities[8:12] = 0.9
    monkeypatch.setattr("ser_worker.segments.frame_probabilities", lambda signal: probabilities)
    signal = np.zeros(20 * FRAME, np.float32)
    encoder_frames = int(20 * FRAME / 16000 / speech_pooling.ENCODER_FRAME_S)

    hard, soft = speech_pooling.speech_weights(signal, encoder_frames, 0.35, pad_s=0.064)

    assert hard.shape == soft.shape == (encoder_frames,)
    times = (np.arange(encoder_frames) + 0.5) * speech_pooling.ENCODER_FRAME_S
    # Speech widened by two detector frames each side: 0.192-0.448 s.
    assert np.array_equal(hard, (times >= 0.192) & (times < 0.448))
    assert np.allclose(soft[(times >= 0.256) & (times < 0.384)], 0.9)
    assert np.allclose(soft[times < 0.192], 0.0)
