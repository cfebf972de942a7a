"""Whisper base's encoder as an ONNX graph, built in memory from the pinned weights, that returns
every pooled block's output in one pass.

Why a graph of our own: CTranslate2 returns only an encoder's last block, so pooling two blocks
cost a second model re-running the blocks below the shallower one. Here each block in ``layers``
is an output of the same pass, through the encoder's final layer norm (what CTranslate2's cut
model returns for it).

Arithmetic follows CTranslate2's ``int8_float32``, which the heads were trained on: weights int8
per output channel, activations quantised on the fly; but the weights use 7 bits (scale
WEIGHT_LEVELS / max |row|, see there). ONNX Runtime's fused ``DynamicQuantizeMatMul`` quantises a
whole activation tensor with one scale; that is close enough everywhere but at the feed-forward's
second matrix, whose input (GELU outputs) has frames far louder than the rest. There each frame
gets its own scale, as in CTranslate2. One scale per tensor is also why a session runs one window
at a time: in a batch, a clip's vector would depend on the clips beside it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HEADS = 8
LAYER_NORM_EPSILON = 1e-5
OPSET = 20  # Gelu and LayerNormalization as standard operators
PER_FRAME = ("ffn/linear_1",)
# 7-bit weights. CPUs without VNNI (AVX2 only, or AVX-512 without VNNI) multiply uint8
# activations by int8 weights in pairs summed into saturating int16 (VPMADDUBSW): 255 * 127 * 2
# overflows, 255 * 63 * 2 cannot. On such a host (an AVX2 AMD EPYC) 8-bit weights gave vectors
# at cosine 0.994 to float32's (CTranslate2's int8 saturates there alike), 7 bits 0.9997
# (docs/RESULTS.md, "7-bit weights"). No CPU can saturate them, so one graph serves every host.
WEIGHT_LEVELS = 63


class _Graph:
    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        from onnx import numpy_helper

        self._arrays = arrays
        self._to_tensor = numpy_helper.from_array
        self.nodes: list = []
        self.initializers: dict[str, object] = {}

    def constant(self, name: str, value) -> str:
        if name not in self.initializers:
            self.initializers[name] = self._to_tensor(np.ascontiguousarray(value), name)
        return name

    def weight(self, name: str) -> str:
        return self.constant(name, self._arrays[name])

    def op(self, op_type: str, *inputs: str, domain: str = "", **attributes) -> str:
        from onnx import helper

        out = f"{op_type}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], domain=domain, **attributes))
        return out

    def layer_norm(self, x: str, prefix: str) -> str:
        return self.op(
            "LayerNormalization",
            x,
            self.weight(f"{prefix}/gamma"),
            self.weight(f"{prefix}/beta"),
            axis=-1,
            epsilon=LAYER_NORM_EPSILON,
        )

    def linear(self, x: str, prefix: str) -> str:
        w = self._arrays[f"{prefix}/weight"]
        scale = (np.abs(w).max(axis=1) / float(WEIGHT_LEVELS)).astype(np.float32)
        scale[scale == 0] = 1.0
        quantised = np.round(w / scale[:, None]).clip(-WEIGHT_LEVELS, WEIGHT_LEVELS)
        quantised = quantised.astype(np.int8).T
        w_int8 = self.constant(f"{prefix}/weight_int8", quantised)
        w_scale = self.constant(f"{prefix}/weight_scale", scale)
        bias = self.weight(f"{prefix}/bias")
        if prefix.endswith(PER_FRAME):
            return self._per_frame_linear(x, w_int8, w_scale, bias)
        zero = self.constant(f"{prefix}/weight_zero", np.zeros(len(scale), np.int8))
        return self.op(
            "DynamicQuantizeMatMul", x, w_int8, w_scale, zero, bias, domain="com.microsoft"
        )

    def _per_frame_linear(self, x: str, w_int8: str, w_scale: str, bias: str) -> str:
        """x @ W with x quantised frame by frame: symmetric int8 steps, stored as uint8 around
        128 so that ONNX Runtime takes its fast u8 x s8 kernel."""
        from onnx import TensorProto

        peak = self.op("ReduceMax", self.op("Abs", x), self.constant("last_axis", [-1]))
        step = self.op(
            "Max",
            self.op("Mul", peak, self.constant("int8_step", np.float32(1 / 127))),
            self.constant("tiny", np.float32(1e-12)),
        )
        steps = self.op("Round", self.op("Div", x, step))
        centred = self.op("Add", steps, self.constant("u8_centre_float", np.float32(128)))
        x_u8 = self.op("Cast", centred, to=TensorProto.UINT8)
        products = self.op("MatMulInteger", x_u8, w_int8, self.constant("u8_zero", np.uint8(128)))
        floats = self.op("Cast", products, to=TensorProto.FLOAT)
        return self.op("Add", self.op("Mul", self.op("Mul", floats, step), w_scale), bias)

    def attention(self, x: str, prefix: str) -> str:
        qkv = self.linear(self.layer_norm(x, f"{prefix}/layer_norm"), f"{prefix}/linear_0")
        width = self._arrays[f"{prefix}/linear_1/weight"].shape[0]
        q, k, v = (f"{prefix}/{part}" for part in "qkv")
        split = self.constant("qkv_split", np.array([width] * 3))
        from onnx import helper

        self.nodes.append(helper.make_node("Split", [qkv, split], [q, k, v], axis=-1))
        heads = self.constant("heads_shape", np.array([0, 0, HEADS, width // HEADS]))

        def by_head(t: str) -> str:
            return self.op("Transpose", self.op("Reshape", t, heads), perm=[0, 2, 1, 3])

        scores = self.op("MatMul", by_head(q), self.op("Transpose", by_head(k), perm=[0, 1, 3, 2]))
        scaled = self.op(
            "Mul", scores, self.constant("score_scale", np.float32((width // HEADS) ** -0.5))
        )
        mixed = self.op("MatMul", self.op("Softmax", scaled, axis=-1), by_head(v))
        frames = self.op(
            "Reshape",
            self.op("Transpose", mixed, perm=[0, 2, 1, 3]),
            self.constant("frames_shape", np.array([0, 0, width])),
        )
        return self.linear(frames, f"{prefix}/linear_1")

    def feed_forward(self, x: str, prefix: str) -> str:
        hidden = self.linear(self.layer_norm(x, f"{prefix}/layer_norm"), f"{prefix}/linear_0")
        return self.linear(self.op("Gelu", hidden), f"{prefix}/linear_1")

    def stem(self, mel: str) -> str:
        """The two convolutions (the second halves the frame rate) and the positions."""
        x = self.op(
            "Conv", mel, self.weight("conv1/weight"), self.weight("conv1/bias"), pads=[1, 1]
        )
        x = self.op(
            "Conv",
            self.op("Gelu", x),
            self.weight("conv2/weight"),
            self.weight("conv2/bias"),
            pads=[1, 1],
            strides=[2],
        )
        x = self.op("Transpose", self.op("Gelu", x), perm=[0, 2, 1])
        frames = self.op(
            "Slice",
            self.op("Shape", x),
            self.constant("one", np.array([1])),
            self.constant("two", np.array([2])),
        )
        positions = self.op(
            "Slice",
            self.weight("position_encodings/encodings"),
            self.constant("zero", np.array([0])),
            frames,
        )
        return self.op("Add", x, positions)


def encoder_graph(arrays: dict[str, np.ndarray], layers: Sequence[int]) -> bytes:
    """A serialised ONNX model: input ``mel`` (windows, mel bands, frames), one output
    ``block_<n>`` (windows, frames / 2, width) per block n in `layers`."""
    from onnx import TensorProto, helper

    graph = _Graph(arrays)
    x = graph.stem("mel")
    outputs = []
    for block in range(1, max(layers) + 1):
        prefix = f"layer_{block - 1}"
        x = graph.op("Add", x, graph.attention(x, f"{prefix}/self_attention"))
        x = graph.op("Add", x, graph.feed_forward(x, f"{prefix}/ffn"))
        if block in layers:
            name = f"block_{block}"
            graph.nodes.append(
                helper.make_node("Identity", [graph.layer_norm(x, "layer_norm")], [name])
            )
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", "t", "c"]))
    mels = arrays["conv1/weight"].shape[1]
    model = helper.make_model(
        helper.make_graph(
            graph.nodes,
            "whisper_encoder",
            [helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["n", mels, "f"])],
            outputs,
            list(graph.initializers.values()),
        ),
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
    )
    return model.SerializeToString()
