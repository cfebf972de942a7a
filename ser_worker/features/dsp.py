"""The signal operations an inference worker runs on every clip, in numpy: librosa's, bit for bit.

librosa is the reference (tests/unit/test_dsp.py compares every function here with it, to the
bit) and stays the tool of training's augmentations. The worker does not import it: librosa's
modules import numba and load its kernels as they are imported, about 1 s of every worker's cold
start (docs/RESULTS.md, "Costs behind design choices"), for a framing, an STFT, a mel filter bank
and a dB conversion that are a few lines of numpy each. Each function repeats librosa's own
operations, in librosa's order and dtypes, so that the results are the same numbers.
"""

from __future__ import annotations

import functools

import numpy as np


def frame(y: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """librosa.util.frame(y, ...) of a 1-D signal: a (frame_length, n_frames) view of y."""
    if y.shape[0] < frame_length:
        raise ValueError(f"a signal of {y.shape[0]} samples is shorter than a frame")
    return np.lib.stride_tricks.sliding_window_view(y, frame_length)[::hop_length].T


@functools.lru_cache(maxsize=8)
def hann(n: int) -> np.ndarray:
    """scipy.signal.get_window("hann", n, fftbins=True): the periodic Hann window (float64),
    by scipy's own arithmetic (general_cosine over n + 1 points, the last dropped)."""
    fac = np.linspace(-np.pi, np.pi, n + 1)
    window = np.zeros(n + 1)
    window += 0.5 * np.cos(0 * fac)
    window += 0.5 * np.cos(1 * fac)
    window = window[:-1]
    window.flags.writeable = False
    return window


def stft(y: np.ndarray, n_fft: int, hop_length: int, pad_mode: str = "constant") -> np.ndarray:
    """librosa.stft(y, n_fft=n_fft, hop_length=hop_length, center=True, window="hann",
    pad_mode=pad_mode) of a 1-D float32 signal: (1 + n_fft // 2, frames), complex64.

    librosa pads only the signal's two ends, frames, and transforms blocks of frames; the padded
    samples, the windowed frames and each frame's transform are the same when the whole signal is
    padded at once, so the result is too.
    """
    half = n_fft // 2
    frames = frame(np.pad(y, (half, half), mode=pad_mode), n_fft, hop_length)
    # The window is float64, so the windowed frames are too (as in librosa); the transform is
    # then stored in the complex type of the signal's dtype.
    spectrum = np.fft.rfft(hann(n_fft)[:, np.newaxis] * frames, axis=-2)
    return spectrum.astype(np.result_type(y.dtype, np.complex64), copy=False)


# Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def _hz_to_mel(frequency: float) -> float:
    if frequency >= _MIN_LOG_HZ:
        return _MIN_LOG_MEL + np.log(frequency / _MIN_LOG_HZ) / _LOGSTEP
    return frequency / _F_SP


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    freqs = _F_SP * mels
    log_t = mels >= _MIN_LOG_MEL
    freqs[log_t] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels[log_t] - _MIN_LOG_MEL))
    return freqs


@functools.lru_cache(maxsize=8)
def mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels): Slaney-scale triangles
    from 0 Hz to Nyquist, Slaney-normalised, float32, (n_mels, 1 + n_fft // 2). Read-only."""
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]
    weights.flags.writeable = False
    return weights


def power_to_db(power: np.ndarray, ref: float | None = None, top_db: float | None = 80.0):
    """librosa.power_to_db(power, ref=np.max if ref is None else ref, amin=1e-10, top_db=top_db)."""
    amin = 1e-10
    ref_value = np.max(power) if ref is None else np.abs(ref)
    log_spec = 10.0 * np.log10(np.maximum(amin, power))
    log_spec -= 10.0 * np.log10(np.maximum(amin, ref_value))
    if top_db is not None:
        log_spec = np.maximum(log_spec, log_spec.max() - top_db)
    return log_spec


def amplitude_to_db(amplitude: np.ndarray) -> np.ndarray:
    """librosa.amplitude_to_db(amplitude, ref=np.max, top_db=None) (amin 1e-5)."""
    magnitude = np.abs(amplitude)
    ref_value = np.max(magnitude)
    power = np.square(magnitude, out=magnitude)
    return power_to_db(power, ref=ref_value**2, top_db=None)


def rms(y: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """librosa.feature.rms(y=y, frame_length=..., hop_length=...)[0] of a 1-D signal (centred,
    zero padding): one float32 value per frame."""
    half = frame_length // 2
    x = frame(np.pad(y, (half, half), mode="constant"), frame_length, hop_length)
    power = np.mean(np.square(x, dtype=np.float32), axis=-2, keepdims=True)
    return np.sqrt(power)[0]
