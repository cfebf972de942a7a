"""Whisper base's encoder as an embedding: each clip's windows run through the encoder and the
frames of chosen blocks are pooled into one vector per clip.

Vectors pool two depths of the encoder, its output (block 6 of 6) and block 3's: emotion sits lower
in the stack than words do, and on the speaker-independent folds' validation actors a head on both
blocks beat either alone (docs/RESULTS.md, "A pretrained speech encoder"). Each pooled block costs
a copy of the encoder cut after it (see ``weights``): 9 blocks run per window, not 6.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from ser_worker.models.encoder.frontend import encoder_windows
from ser_worker.models.encoder.weights import (
    ENCODER_BLOCKS,
    ENCODER_STRIDE,
    ENCODER_WIDTH,
    model_files,
    verified_weight_parts,
)

# The blocks whose outputs a clip's vector pools, shallowest first. Bundles record theirs:
# heads fitted before block 3 was added read (6,).
LAYERS = (3, 6)
BATCH_WINDOWS = 16


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


@functools.lru_cache(maxsize=2)
def load_encoder(layers: tuple[int, ...] = LAYERS, threads: int = 0) -> SpeechEncoder:
    """One encoder per process and set of layers, built on first use (never in a Celery
    parent: not fork-safe)."""
    return SpeechEncoder(layers, threads)
