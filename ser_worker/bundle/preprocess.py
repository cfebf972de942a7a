"""A decoded clip as each member of a bundle reads it, following the manifest's preprocessing.

The CNNs were trained on clips with their edge silence cut, the speech encoder's head on clips
as decoded; members of new bundles read every clip at one loudness. Those rules live here and in
the manifest, nowhere else (``Bundle.prepare``).
"""

from __future__ import annotations

import numpy as np

from ser_worker.audio import AudioLimits, check_duration, resample, trim_silence
from ser_worker.bundle.manifest import Preprocessing
from ser_worker.bundle.records import PreparedClip
from ser_worker.loudness import normalise_loudness


def prepare_clip(
    signal: np.ndarray,
    sampling_rate: int,
    preprocessing: Preprocessing,
    limits: AudioLimits | None = None,
) -> PreparedClip:
    """`signal` (mono, any rate) resampled to the bundle's rate and trimmed per member.

    Raises TooShortError when the clip, or what trimming leaves of it, is under the minimum.
    """
    limits = limits or AudioLimits.from_settings()
    y = np.asarray(signal, dtype=np.float32)
    if y.ndim != 1:
        raise ValueError(f"expected a mono signal (one axis), got shape {y.shape}")
    y = np.ascontiguousarray(resample(y, sampling_rate), dtype=np.float32)
    check_duration(y, limits)
    # Before trimming: the trim threshold is relative to the peak, so it cuts the same edges.
    y = at_loudness(y, preprocessing)
    top_db = preprocessing.cnn.trim_top_db
    cnn = trim_silence(y, limits, top_db) if preprocessing.cnn.trim else y
    encoder = trim_silence(y, limits) if preprocessing.encoder.trim else y
    return PreparedClip(
        cnn=cnn, encoder=encoder, duration_s=cnn.shape[0] / preprocessing.sample_rate
    )


def at_loudness(y: np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
    """`y` (at the bundle's rate) at the loudness the manifest asks for; as it is if none."""
    if preprocessing.loudness is None:
        return y
    return normalise_loudness(y, preprocessing.sample_rate, preprocessing.loudness.target_lufs)
