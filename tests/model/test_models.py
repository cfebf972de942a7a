import keras
import numpy as np
import pytest

from ser_worker.features.study import FeatureSettings
from ser_worker.models.cnn import (
    build_cnn1d,
    build_cnn2d,
    build_model,
    compile_model,
)
from ser_worker.models.registry import input_shape


def test_cnn1d_architecture():
    model = build_cnn1d()
    assert model.name == "cnn1d"
    assert model.count_params() == 587_526
    assert model.input_shape == (None, 800, 1)
    assert model.output_shape == (None, 6)
    momenta = [
        layer.momentum
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert momenta == [0.9] * 4


def test_cnn2d_architecture():
    settings = FeatureSettings()
    model = build_cnn2d()
    assert model.name == "cnn2d"
    assert model.count_params() == 1_620_102
    assert model.input_shape == (None, 128, settings.mel_frames, 1)
    assert model.output_shape == (None, 6)


@pytest.mark.parametrize("n_frames", [64, 224])
def test_cnn2d_parameter_count_does_not_depend_on_window(n_frames):
    model = build_cnn2d(n_frames=n_frames)
    assert model.input_shape == (None, 128, n_frames, 1)
    assert model.count_params() == 1_620_102


def test_outputs_are_softmax_rows():
    rng = np.random.default_rng(0)
    for model in (build_cnn1d(), build_cnn2d(n_frames=32)):
        x = rng.standard_normal((3, *model.input_shape[1:])).astype("float32")
        p = keras.ops.convert_to_numpy(model(x, training=False))
        assert p.shape == (3, 6)
        assert np.all(p >= 0)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


def test_build_model_uses_feature_settings_shapes():
    settings = FeatureSettings(mel_frames=48, seq_frames=100)
    for name in ("cnn1d", "cnn2d"):
        model = build_model(name, input_shape(name, settings))
        assert model.name == name
        assert model.input_shape[1:] == input_shape(name, settings)
    assert input_shape("cnn1d", settings) == (200, 1)
    assert input_shape("cnn2d", settings) == (128, 48, 1)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("rnn", (10, 1))


def test_compile_model_sets_loss_and_learning_rate():
    model = compile_model(build_cnn1d(input_length=64), learning_rate=3e-4)
    assert model.loss == "sparse_categorical_crossentropy"
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(3e-4)
    x = np.zeros((4, 64, 1), "float32")
    logs = model.train_on_batch(x, np.array([0, 1, 2, 3]), return_dict=True)
    assert set(logs) >= {"loss", "accuracy"}
