"""ONNX exports of a bundle's CNNs, so that inference needs onnxruntime and not TensorFlow.

TensorFlow's import and memory are most of a worker's cold start and RSS, for two small CNNs.
A bundle written by this code carries ``<name>.onnx`` beside each ``<name>.weights.h5``
(exported with tf2onnx when the bundle is written, from the same float32 weights) and its
manifest entry names the file (``ModelEntry.onnx``). The weights file stays the source of
truth: training, fine-tuning and the version hash read it, and a bundle without exports (every
one written before them) runs on Keras as before. ``bundle.exports.add_exports`` gives an
existing bundle its exports without changing its version.

Exporting needs TensorFlow and tf2onnx; running an export needs onnxruntime alone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from ser_worker.bundle.manifest import BundleError

if TYPE_CHECKING:
    import keras

ONNX_SUFFIX = ".onnx"
# Opset 17 is read by every onnxruntime since 1.13; the CNNs need nothing newer.
OPSET = 17


def exporter_available() -> bool:
    """Whether this environment can write exports (tf2onnx installed)."""
    import importlib.util

    return importlib.util.find_spec("tf2onnx") is not None


def runtime_available() -> bool:
    """Whether this environment can run exports (onnxruntime installed)."""
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def export_cnn(model: keras.Model) -> bytes:
    """The serialized ONNX graph of a float32 Keras CNN, batch axis left open."""
    import tensorflow as tf
    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    spec = (tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="input"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET)
    return proto.SerializeToString()


def session(data: bytes):
    """An onnxruntime session of an export, with this process's thread budget (SER_TF_THREADS
    serves both runtimes: the workers give each process one core)."""
    import onnxruntime as ort

    from ser_worker.config import get_settings

    options = ort.SessionOptions()
    options.intra_op_num_threads = get_settings().tf_threads or 0
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


class OnnxCnn:
    """A CNN member run by onnxruntime. Prediction (``predict_on_batch``) never touches Keras;
    anything else a Keras model offers (weights, training, summary) is served by its Keras twin,
    rebuilt from the bundle's weights on first use."""

    def __init__(
        self,
        name: str,
        input_shape: tuple[int, ...],
        data: bytes,
        keras_twin: Callable[[], keras.Model],
    ) -> None:
        self.name = name
        self.onnx_bytes = data
        self._keras_twin = keras_twin
        try:
            self.session = session(data)
        except Exception as exc:  # onnxruntime raises its own unrelated types
            raise BundleError(f"the ONNX export of {name} is not loadable: {exc}") from exc
        inputs = self.session.get_inputs()
        shape = tuple(inputs[0].shape[1:]) if len(inputs) == 1 else None
        if shape != tuple(input_shape):
            raise BundleError(
                f"the ONNX export of {name} takes {shape}, the manifest says {list(input_shape)}"
            )
        self._input = inputs[0].name
        self.input_shape = (None, *input_shape)

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input: np.asarray(x, dtype=np.float32)})[0]

    @cached_property
    def keras_model(self) -> keras.Model:
        return self._keras_twin()

    def __getattr__(self, attribute: str) -> Any:
        # Only reached for names this class lacks; never for the session or the twin themselves.
        if attribute.startswith("_") or attribute in ("session", "keras_model"):
            raise AttributeError(attribute)
        return getattr(self.keras_model, attribute)
