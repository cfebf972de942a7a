"""Whisper base's encoder as an embedding: each clip's windows run through the encoder and the
frames of chosen blocks are pooled into one vector per clip.

Vectors pool two depths of the encoder, its output (block 6 of 6) and block 3's: emotion sits lower
in the stack than words do, and on the speaker-independent folds' validation actors a head on both
blocks beat either alone (docs/RESULTS.md, "A pretrained speech encoder").

Two runtimes give the same vectors on CPUs with VNNI (per clip, cosine above 0.999 on the
committed clips): ``onnxruntime`` (the default) runs the encoder once per window and returns
every pooled block (``graph``); ``ctranslate2``, the path the shipped heads were fitted on, needs
a copy of the encoder cut after each pooled block (``weights``), so 9 blocks run per window, not
6. It stays for comparison (benchmarks) and, in float32, as the reference the tests hold the
default to (its int8 products saturate on CPUs without VNNI: graph.WEIGHT_LEVELS).

Windows keep their padding to ``WINDOW_SECONDS``: every frame attends to the padding too, and
windows cut to the clip move the vectors too far from the ones the heads were fitted on
(docs/RESULTS.md, "Encoder speed").
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ser_worker.labels import POOL_ALL
from ser_worker.models.encoder.cache import default_cache_dir
from ser_worker.models.encoder.frontend import encoder_windows
from ser_worker.models.encoder.pooling import pooled, weightings
from ser_worker.models.encoder.weights import (
    ENCODER_BLOCKS,
    ENCODER_STRIDE,
    ENCODER_WIDTH,
    EncoderUnavailable,
    model_files,
    verified_weight_parts,
)

# The blocks whose outputs a clip's vector pools, shallowest first. Bundles record theirs:
# heads fitted before block 3 was added read (6,).
LAYERS = (3, 6)
BATCH_WINDOWS = 16
ONNXRUNTIME = "onnxruntime"
CTRANSLATE2 = "ctranslate2"
BACKENDS = (ONNXRUNTIME, CTRANSLATE2)


def embedding_size(layers: Sequence[int] = LAYERS, pooling: str = POOL_ALL) -> int:
    """Mean and standard deviation of ENCODER_WIDTH channels per pooled block, once per
    weighting the pooling uses."""
    return 2 * ENCODER_WIDTH * len(layers) * weightings(pooling)


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


class _OnnxEncoder:
    """One session of the whole encoder, every pooled block an output of the same pass."""

    # Activations are quantised with one scale per tensor (see ``graph``): one window per run.
    batch_windows = 1

    def __init__(self, layers: tuple[int, ...], threads: int, cache_dir: Path | None) -> None:
        import onnxruntime

        from ser_worker.models.encoder.cache import encoder_graph_bytes

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # Idle threads sleep instead of spinning: worker processes share the host's cores, and a
        # spinning pool takes them from the others (docs/RESULTS.md, "Encoder speed").
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(
            encoder_graph_bytes(layers, cache_dir),
            options,
            providers=["CPUExecutionProvider"],
        )
        self._outputs = [f"block_{block}" for block in layers]

    def __call__(self, features: np.ndarray) -> list[np.ndarray]:
        return self._session.run(self._outputs, {"mel": features})


class _CTranslate2Encoder:
    """One CTranslate2 model per pooled block, each cut after its block."""

    batch_windows = BATCH_WINDOWS

    def __init__(
        self, parts, layers: tuple[int, ...], threads: int, compute_type: str = "int8_float32"
    ) -> None:
        import ctranslate2

        self._ctranslate2 = ctranslate2
        # int8 weights with float32 activations: 2-3x faster than float32 on CPU, and the
        # pooled vectors it gives are what the heads were trained on. float32: the tests'
        # reference for the default runtime's arithmetic.
        self._models = [
            ctranslate2.models.Whisper(
                "whisper-base",
                device="cpu",
                compute_type=compute_type,
                intra_threads=threads,
                files=model_files(parts, blocks),
            )
            for blocks in layers
        ]

    def __call__(self, features: np.ndarray) -> list[np.ndarray]:
        view = self._ctranslate2.StorageView.from_array(np.ascontiguousarray(features))
        return [np.asarray(model.encode(view, to_cpu=True)) for model in self._models]


class SpeechEncoder:
    """Whisper base's encoder on CPU; `embed` maps waveforms to vectors that pool each of
    `layers` (embedding_size(layers, pooling) numbers per clip). `backend` is one of BACKENDS."""

    def __init__(
        self,
        layers: Sequence[int] = LAYERS,
        threads: int = 0,
        backend: str = ONNXRUNTIME,
        cache_dir: Path | None = None,
    ) -> None:
        """`cache_dir`: where the ONNX Runtime graph is kept between processes (cache.py);
        None builds it from the weights every time."""
        if backend not in BACKENDS:
            raise ValueError(f"encoder backend must be one of {BACKENDS}: {backend!r}")
        self.layers = check_layers(layers)
        self.backend = backend
        try:
            if backend == ONNXRUNTIME:
                self._run = _OnnxEncoder(self.layers, threads, cache_dir)
            else:
                self._run = _CTranslate2Encoder(verified_weight_parts(), self.layers, threads)
        except ModuleNotFoundError as exc:
            raise EncoderUnavailable(
                f"the speech encoder's {backend} backend needs {exc.name}; reinstall ser: "
                "pip install -e ."
            ) from exc

    def frames(self, waveforms: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
        """frames[clip][layer]: that pooled block's output frames over the whole clip (time,
        ENCODER_WIDTH), window after window."""
        windows = [
            (clip, window) for clip, y in enumerate(waveforms) for window in encoder_windows(y)
        ]
        parts: list[list[list[np.ndarray]]] = [[[] for _ in self.layers] for _ in waveforms]
        step = self._run.batch_windows
        for start in range(0, len(windows), step):
            batch = windows[start : start + step]
            outputs = self._run(np.stack([features for _, (features, _) in batch]))
            for layer, encoded in enumerate(outputs):
                for (clip, (_, valid)), out in zip(batch, encoded, strict=True):
                    parts[clip][layer].append(out[: (valid + 1) // ENCODER_STRIDE])
        return [[np.concatenate(layer) for layer in clip] for clip in parts]

    def embed(self, waveforms: Sequence[np.ndarray], pooling: str = POOL_ALL) -> np.ndarray:
        """One vector per clip, its frames pooled as `pooling` says (encoder.pooling)."""
        frames = self.frames(waveforms)
        if not frames:
            return np.zeros((0, embedding_size(self.layers, pooling)), np.float32)
        return np.stack(
            [pooled(clip, pooling, y) for y, clip in zip(waveforms, frames, strict=True)]
        )


@functools.lru_cache(maxsize=4)
def load_encoder(
    layers: tuple[int, ...] = LAYERS, threads: int = 0, backend: str = ONNXRUNTIME
) -> SpeechEncoder:
    """One encoder per process, set of layers and backend, built on first use (never in a
    Celery parent: not fork-safe), its graph cached under SER_DATA_DIR."""
    return SpeechEncoder(layers, threads, backend, default_cache_dir())
