"""How a clip's encoder frames become one vector: the pooling a head was fitted on.

- ``all``: mean and standard deviation of every frame of each pooled block. Bundles before
  issue #14's pooling record nothing and read this.
- ``all+soft``: those, and beside them the same statistics with each frame weighted by Silero's
  speech probability at that time (the timeline's detector, ``segments.frame_probabilities``).
  Noise fills the room tone around the speech most, and *all* pools it as if it were voice; the
  weighted half follows the voice. Both halves together, because pooling only the speech costs
  clean accuracy: the frames around it carry information too (docs/RESULTS.md, "Pooling the
  speech frames as well").

New bundles pool with ``POOLING``; a bundle records its own (manifest ``encoder.pooling``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ser_worker.labels import ENCODER_POOLINGS, POOL_ALL_SOFT, SAMPLE_RATE
from ser_worker.models.encoder.frontend import HOP
from ser_worker.models.encoder.weights import ENCODER_STRIDE

POOLING = POOL_ALL_SOFT
# One encoder frame: Whisper's 10 ms hop, halved by the encoder's stride-2 convolution.
ENCODER_FRAME_S = HOP * ENCODER_STRIDE / SAMPLE_RATE
# Every frame keeps a little weight: a clip Silero hears no speech in still gets a vector (then
# the frames' plain statistics), and a silent stretch never divides by zero.
SOFT_FLOOR = 1e-3


def check_pooling(pooling: str) -> str:
    if pooling not in ENCODER_POOLINGS:
        raise ValueError(f"encoder pooling must be one of {ENCODER_POOLINGS}: {pooling!r}")
    return pooling


def weightings(pooling: str) -> int:
    """How many ways each pooled block's frames are weighted: one (mean, std) pair each."""
    return 2 if check_pooling(pooling) == POOL_ALL_SOFT else 1


def pool(frames: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Mean and standard deviation over time of encoder frames (time, width), each frame
    counted by its weight when `weights` (time,) are given."""
    if weights is None:
        return np.concatenate([frames.mean(axis=0), frames.std(axis=0)]).astype(np.float32)
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mean = w @ frames
    std = np.sqrt(np.maximum(w @ (frames - mean) ** 2, 0.0))
    return np.concatenate([mean, std]).astype(np.float32)


def speech_weights(probabilities: np.ndarray, n_frames: int, detector_frame_s: float) -> np.ndarray:
    """Each of `n_frames` encoder frames weighted by the speech probability of the detector
    frame (`detector_frame_s` long) under its centre."""
    if probabilities.size == 0:
        return np.ones(n_frames, np.float32)
    under = ((np.arange(n_frames) + 0.5) * ENCODER_FRAME_S / detector_frame_s).astype(int)
    return probabilities[np.minimum(under, probabilities.size - 1)] + SOFT_FLOOR


def pooled(blocks: Sequence[np.ndarray], pooling: str, signal: np.ndarray) -> np.ndarray:
    """One clip's vector from its pooled blocks' frames (SpeechEncoder.frames) and its
    waveform as the encoder read it (16 kHz): every block's ``all`` statistics, then, for
    ``all+soft``, every block's speech-weighted ones."""
    vector = [pool(frames) for frames in blocks]
    if check_pooling(pooling) == POOL_ALL_SOFT:
        from ser_worker.segments import FRAME_S, frame_probabilities

        weights = speech_weights(frame_probabilities(signal), len(blocks[0]), FRAME_S)
        vector += [pool(frames, weights) for frames in blocks]
    return np.concatenate(vector)
