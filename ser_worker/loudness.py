"""Loudness normalisation: every member of a new bundle reads a clip at one loudness, so the
recording level cannot decide the emotion (issue #14).

ITU-R BS.1770 integrated loudness (K-weighted, gated), measured with pyloudnorm. The clip is
first scaled to full-scale peak and measured there: loudness is homogeneous in gain except for
BS.1770's absolute gate at -70 LUFS, which on a quiet recording would drop blocks that the same
clip recorded louder keeps. Measured after peak scaling, the gate sits at the same place for any
gain, so the output is the same signal whatever the input level (up to float rounding).
"""

from __future__ import annotations

import numpy as np

# BS.1770's gating block. Clips shorter than this (the service accepts 0.25 s) are measured in
# one block of their own length.
BLOCK_S = 0.4


def integrated_loudness(y: np.ndarray, sampling_rate: int) -> float:
    """BS.1770 integrated loudness in LUFS (-inf when every block is gated out)."""
    import pyloudnorm

    block = min(BLOCK_S, len(y) / sampling_rate)
    meter = pyloudnorm.Meter(sampling_rate, block_size=block)
    return float(meter.integrated_loudness(np.asarray(y, dtype=np.float64)))


def normalise_loudness(y: np.ndarray, sampling_rate: int, target_lufs: float) -> np.ndarray:
    """`y` scaled to `target_lufs` (float32; peaks may exceed 1.0, nothing is clipped).

    A signal without any sample above zero comes back unchanged (the decoder rejects silent
    clips before this); one whose every block is gated out stays at full-scale peak.
    """
    peak = float(np.max(np.abs(y))) if len(y) else 0.0
    if peak == 0.0:
        return np.asarray(y, dtype=np.float32)
    at_peak = np.asarray(y, dtype=np.float64) / peak
    loudness = integrated_loudness(at_peak, sampling_rate)
    gain = 10.0 ** ((target_lufs - loudness) / 20.0) if np.isfinite(loudness) else 1.0
    return (at_peak * gain).astype(np.float32)
