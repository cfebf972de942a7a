"""The speech-frame pooling experiment's pure parts (research.speech_pooling)."""

from __future__ import annotations

import numpy as np

from research import speech_pooling
from ser_worker.models.encoder.pooling import ENCODER_FRAME_S, SOFT_FLOOR
from ser_worker.segments import FRAME


def test_speech_weights_map_detector_frames_onto_encoder_frames_and_widen_by_the_pad(
    monkeypatch,
):
    # 20 detector frames of 32 ms, speech in frames 8-11 (0.256-0.384 s).
    probabilities = np.zeros(20, np.float32)
    probabilities[8:12] = 0.9
    monkeypatch.setattr("ser_worker.segments.frame_probabilities", lambda signal: probabilities)
    signal = np.zeros(20 * FRAME, np.float32)
    encoder_frames = int(20 * FRAME / 16000 / ENCODER_FRAME_S)

    hard, soft, rest = speech_pooling.speech_weights(signal, encoder_frames, 0.35, pad_s=0.064)

    assert hard.shape == soft.shape == (encoder_frames,)
    times = (np.arange(encoder_frames) + 0.5) * ENCODER_FRAME_S
    # Speech widened by two detector frames each side: 0.192-0.448 s.
    assert np.array_equal(hard, (times >= 0.192) & (times < 0.448))
    assert np.allclose(soft[(times >= 0.256) & (times < 0.384)], 0.9 + SOFT_FLOOR)
    assert np.allclose(soft[times < 0.192], SOFT_FLOOR)
    # The rest weights are the complement: what the recording holds around the voice.
    assert np.allclose(rest[(times >= 0.256) & (times < 0.384)], 0.1 + SOFT_FLOOR)
    assert np.allclose(rest[times < 0.192], 1.0 + SOFT_FLOOR)
