"""The two CNNs: a 1D net over the ZCR/energy sequence and a 2D net over the log-mel image.

Both are rebuilt from this code when a bundle is loaded (bundles store weights only), so any
change here that alters a layer or a parameter count breaks every stored bundle.
"""

from __future__ import annotations

import keras

from ser_worker.features.study import FeatureSettings
from ser_worker.labels import CNN1D, CNN2D, EMOTIONS, MODEL_NAMES
from ser_worker.models.registry import input_shape

__all__ = [
    "build_cnn1d",
    "build_cnn2d",
    "build_model",
    "build_models",
    "compile_model",
    "input_shape",  # re-exported from models.registry for the callers that build a model
]

FILTERS = (64, 128, 256, 512)
DENSE_UNITS = 128
DROPOUT = 0.2
# Keras' default BatchNormalization momentum of 0.99 lets the moving statistics lag far behind
# the batch statistics on small data sets, and small runs then collapsed to predicting a single
# class at inference time; 0.9 tracks them within a few epochs.
BN_MOMENTUM = 0.9


def build_cnn1d(
    input_length: int | None = None,
    n_classes: int = len(EMOTIONS),
    bn_momentum: float = BN_MOMENTUM,
) -> keras.Model:
    """Four Conv1D blocks over the (input_length, 1) feature sequence: 587,526 parameters."""
    if input_length is None:
        input_length = FeatureSettings().input_length_1d
    inputs = keras.Input(shape=(input_length, 1), name="sequence")
    x = inputs
    for filters in FILTERS:
        x = keras.layers.Conv1D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.BatchNormalization(momentum=bn_momentum)(x)
        x = keras.layers.MaxPooling1D(2)(x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, _head(x, n_classes), name=CNN1D)


def build_cnn2d(
    n_mels: int | None = None,
    n_frames: int | None = None,
    n_classes: int = len(EMOTIONS),
    bn_momentum: float = BN_MOMENTUM,
) -> keras.Model:
    """Four Conv2D blocks over the (n_mels, n_frames, 1) log-mel image: 1,620,102 parameters.

    Global average pooling makes the parameter count independent of the input size, so the
    same architecture serves any FeatureSettings; the input shape is still fixed per model
    because training and inference must see the same window.
    """
    defaults = FeatureSettings()
    n_mels = defaults.n_mels if n_mels is None else n_mels
    n_frames = defaults.mel_frames if n_frames is None else n_frames
    inputs = keras.Input(shape=(n_mels, n_frames, 1), name="mel")
    x = inputs
    for filters in FILTERS:
        x = keras.layers.Conv2D(filters, (3, 3), padding="same", activation="relu")(x)
        x = keras.layers.BatchNormalization(momentum=bn_momentum)(x)
        x = keras.layers.MaxPooling2D((2, 2))(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, _head(x, n_classes), name=CNN2D)


def _head(x, n_classes: int):
    x = keras.layers.Dense(DENSE_UNITS, activation="relu")(x)
    x = keras.layers.Dropout(DROPOUT)(x)
    # float32 even when training in mixed precision: a bfloat16 softmax keeps ~3 significant
    # digits, too coarse for the log of small probabilities in the loss.
    return keras.layers.Dense(
        n_classes, activation="softmax", name="probabilities", dtype="float32"
    )(x)


_BUILDERS = {
    CNN1D: lambda shape: build_cnn1d(input_length=shape[0]),
    CNN2D: lambda shape: build_cnn2d(n_mels=shape[0], n_frames=shape[1]),
}


def build_model(name: str, shape: tuple[int, ...]) -> keras.Model:
    """Rebuild a model by name for an input shape without the batch axis (bundle loading)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; expected one of {MODEL_NAMES}")
    return _BUILDERS[name](shape)


def build_models(
    names: tuple[str, ...] | list[str], settings: FeatureSettings
) -> dict[str, keras.Model]:
    return {name: build_model(name, input_shape(name, settings)) for name in names}


def compile_model(model: keras.Model, learning_rate: float = 1e-3) -> keras.Model:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
