"""Whisper's input features, computed with librosa, and the windows a clip is cut into.

The encoder sees at most ``WINDOW_SECONDS`` at a time: Whisper's own window is 30 s, mostly padding
for emotion clips of 2-5 s, and a shorter one costs a fraction as much for nearly the same pooled
vectors (docs/RESULTS.md, "A pretrained speech encoder"). Longer clips are cut into windows whose
frames are pooled together.
"""

from __future__ import annotations

import functools

import librosa
import numpy as np

from ser_worker.labels import SAMPLE_RATE

N_FFT = 400
HOP = 160
N_MELS = 80
WINDOW_SECONDS = 6
WINDOW_FRAMES = WINDOW_SECONDS * SAMPLE_RATE // HOP


@functools.lru_cache(maxsize=1)
def _mel_filters() -> np.ndarray:
    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS).astype(np.float32)


def whisper_log_mel(y: np.ndarray) -> np.ndarray:
    """Whisper's input features (80 log-mel bands, 10 ms hop, scaled to about -1..1) of a
    16 kHz waveform: the operations of whisper.audio.log_mel_spectrogram, in librosa."""
    stft = librosa.stft(
        y.astype(np.float32), n_fft=N_FFT, hop_length=HOP, window="hann", pad_mode="reflect"
    )
    power = np.abs(stft[:, :-1]) ** 2
    log_spec = np.log10(np.maximum(_mel_filters() @ power, 1e-10))
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
