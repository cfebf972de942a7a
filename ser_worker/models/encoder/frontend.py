"""Whisper's input features, computed as librosa computes them (features.dsp), and the windows
a clip is cut into.

The encoder sees at most ``WINDOW_SECONDS`` at a time: Whisper's own window is 30 s, mostly padding
for emotion clips of 2-5 s, and a shorter one costs a fraction as much for nearly the same pooled
vectors (docs/RESULTS.md, "A pretrained speech encoder"). Longer clips are cut into windows whose
frames are pooled together.
"""

from __future__ import annotations

import numpy as np

from ser_worker.features import dsp
from ser_worker.labels import SAMPLE_RATE

N_FFT = 400
HOP = 160
N_MELS = 80
WINDOW_SECONDS = 6
WINDOW_FRAMES = WINDOW_SECONDS * SAMPLE_RATE // HOP


def whisper_log_mel(y: np.ndarray) -> np.ndarray:
    """Whisper's input features (80 log-mel bands, 10 ms hop, scaled to about -1..1) of a
    16 kHz waveform: the operations of whisper.audio.log_mel_spectrogram, in numpy."""
    stft = dsp.stft(y.astype(np.float32), N_FFT, HOP, pad_mode="reflect")
    power = np.abs(stft[:, :-1]) ** 2
    log_spec = np.log10(np.maximum(dsp.mel_filters(SAMPLE_RATE, N_FFT, N_MELS) @ power, 1e-10))
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def encoder_windows(y: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """(features of one window, WINDOW_FRAMES wide, number of its frames that hold the clip).

    Each window is padded with digital silence before the features are computed, as Whisper
    pads its 30 s window, so the last window's padding looks like Whisper's own.
    """
    window_samples = WINDOW_FRAMES * HOP
    windows = []
    for start in range(0, max(len(y), 1), window_samples):
        chunk = y[start : start + window_samples]
        padded = np.concatenate([chunk, np.zeros(window_samples, np.float32)])
        features = whisper_log_mel(padded)[:, :WINDOW_FRAMES]
        windows.append((features, max(1, min(len(chunk) // HOP, WINDOW_FRAMES))))
    return windows
