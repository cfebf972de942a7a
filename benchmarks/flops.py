"""Analytic floating-point operations of a Keras model's forward pass, per example.

Counts the multiply-adds of every layer with a ``kernel`` (Conv1D, Conv2D, Dense) as 2 FLOPs
each: ``prod(output spatial dims) * kernel.size`` multiply-adds. Bias adds, activations,
batch normalisation, pooling and softmax are elementwise and left out (well under 1% of these
models' total).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

_COUNTED = ("Conv1D", "Conv2D", "Conv3D", "Dense")


@dataclass(frozen=True)
class LayerFlops:
    name: str
    kind: str
    macs: int

    @property
    def flops(self) -> int:
        return 2 * self.macs


def layer_flops(model) -> list[LayerFlops]:
    """Multiply-adds per example of each counted layer, in model order."""
    counted = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in _COUNTED:
            continue
        if getattr(layer, "groups", 1) != 1:
            raise NotImplementedError(f"grouped convolution {layer.name} is not counted")
        output_shape = tuple(layer.output.shape)
        # Batch axis first, channels last: each output position takes one kernel's worth of MACs
        # per output channel, and kernel.size already holds (spatial * in * out).
        positions = math.prod(int(d) for d in output_shape[1:-1])
        kernel_size = math.prod(int(d) for d in layer.kernel.shape)
        counted.append(LayerFlops(layer.name, kind, positions * kernel_size))
    return counted


def model_flops(model) -> int:
    """FLOPs (2 x multiply-adds) of one example's forward pass."""
    return sum(layer.flops for layer in layer_flops(model))


def encoder_window_flops(frames: int, blocks: int, stems: int = 1) -> int:
    """FLOPs (2 x multiply-adds) of Whisper base's encoder on one window of `frames` log-mel
    frames: `stems` runs of the two convolutions, then `blocks` transformer blocks on the
    half-rate frames (the four linear maps, and attention's two products over all frames).
    Layer norms, GELU, softmax and the positions are elementwise and left out."""
    from ser_worker.models.encoder import ENCODER_STRIDE, ENCODER_WIDTH, N_MELS

    width, hidden = ENCODER_WIDTH, 4 * ENCODER_WIDTH  # Whisper's feed-forward is 4x wide
    t = -(-frames // ENCODER_STRIDE)
    stem = frames * width * N_MELS * 3 + t * width * width * 3
    block = t * width * (3 * width + width + 2 * hidden) + 2 * t * t * width
    return 2 * (stems * stem + blocks * block)
