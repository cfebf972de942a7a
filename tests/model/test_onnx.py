"""ONNX exports of the CNNs (ser_worker.bundle.onnx): new bundles carry them, onnxruntime runs
them within 1e-4 of Keras on the committed clips, prediction then never imports TensorFlow,
and bundles without them (or asked for Keras) keep running on Keras."""

import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ser_worker.audio import load_audio
from ser_worker.bundle import (
    BundleError,
    bundle_bytes,
    create_bundle,
    load_bundle,
    read_manifest,
    shipped_bundle_bytes,
)
from ser_worker.bundle.core import predict_probabilities
from ser_worker.bundle.exports import add_exports
from ser_worker.bundle.onnx import OnnxCnn
from ser_worker.features.study import FeatureSettings, batch_inputs, extract, fit_normalizer
from ser_worker.labels import MODEL_NAMES

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def features():
    clips = [load_audio(p) for p in sorted(DATA.rglob("*.flac"))]
    return [extract(y, FeatureSettings()) for y in clips]


@pytest.fixture(scope="module")
def trained(features) -> bytes:
    """A new bundle of both CNNs after a few real steps (weights and BN statistics moved)."""
    from ser_worker.models.cnn import build_models, compile_model

    settings = FeatureSettings()
    normalizer = fit_normalizer(features)
    models = build_models(MODEL_NAMES, settings)
    x1, x2 = batch_inputs(features, settings, normalizer)
    y = np.arange(len(features)) % 6
    for name, x in zip(MODEL_NAMES, (x1, x2), strict=True):
        compile_model(models[name])
        for _ in range(2):
            models[name].train_on_batch(x, y)
    return bundle_bytes(create_bundle(models, feature_settings=settings, normalizer=normalizer))


def _worst(a: dict, b: dict) -> float:
    return max(float(np.abs(a[name] - b[name]).max()) for name in MODEL_NAMES)


def test_new_bundles_carry_exports_that_match_keras(trained, features):
    manifest = read_manifest(trained)
    with zipfile.ZipFile(io.BytesIO(trained)) as archive:
        names = set(archive.namelist())
    for name in MODEL_NAMES:
        assert manifest.models[name].onnx == f"{name}.onnx" and f"{name}.onnx" in names
    on_onnx, on_keras = load_bundle(trained), load_bundle(trained, runtime="keras")
    assert all(isinstance(m, OnnxCnn) for m in on_onnx.models.values())
    assert not any(isinstance(m, OnnxCnn) for m in on_keras.models.values())
    assert (
        _worst(predict_probabilities(on_onnx, features), predict_probabilities(on_keras, features))
        <= TOLERANCE
    )


def test_the_shipped_exports_match_keras(features):
    data = shipped_bundle_bytes()
    onnx_bundle = load_bundle(data, runtime="onnx")
    keras_bundle = load_bundle(data, runtime="keras")
    vectors = np.zeros((len(features), onnx_bundle.encoder_head.coef.shape[1]), np.float32)
    got = predict_probabilities(onnx_bundle, features, encoder_vectors=vectors)
    want = predict_probabilities(keras_bundle, features, encoder_vectors=vectors)
    assert _worst(got, want) <= TOLERANCE


def test_a_bundle_without_exports_runs_on_keras(trained, features):
    old = _without_exports(trained)
    assert all(entry.onnx is None for entry in read_manifest(old).models.values())
    bundle = load_bundle(old)
    assert not any(isinstance(m, OnnxCnn) for m in bundle.models.values())
    with pytest.raises(BundleError, match="no ONNX export"):
        load_bundle(old, runtime="onnx")
    # Adding exports later keeps the version and every other member's bytes.
    added = add_exports(old)
    assert read_manifest(added).version == read_manifest(old).version
    with zipfile.ZipFile(io.BytesIO(old)) as a, zipfile.ZipFile(io.BytesIO(added)) as b:
        for name in a.namelist():
            if name != "manifest.json":
                assert a.read(name) == b.read(name)
    assert (
        _worst(
            predict_probabilities(load_bundle(added), features),
            predict_probabilities(bundle, features),
        )
        <= TOLERANCE
    )


def test_an_onnx_member_still_offers_its_keras_weights(trained):
    on_onnx, on_keras = load_bundle(trained), load_bundle(trained, runtime="keras")
    for name in MODEL_NAMES:
        model = on_onnx.models[name]
        assert model.count_params() == on_keras.models[name].count_params()
        for a, b in zip(model.get_weights(), on_keras.models[name].get_weights(), strict=True):
            np.testing.assert_array_equal(a, b)
    # Re-written, an ONNX-loaded bundle keeps its exports and its version.
    again = bundle_bytes(on_onnx)
    assert read_manifest(again).version == read_manifest(trained).version
    assert isinstance(load_bundle(again).models[MODEL_NAMES[0]], OnnxCnn)


def test_a_damaged_export_is_a_bundle_error(trained):
    with pytest.raises(BundleError, match="ONNX export of cnn1d"):
        load_bundle(_replace(trained, "cnn1d.onnx", b"not a graph"))


def test_prediction_with_exports_never_imports_tensorflow():
    """The Python API on the shipped bundle (exports for both CNNs): TensorFlow and Keras stay
    out of the process, which is what makes inference workers cheap to start."""
    script = (
        "import sys; from pathlib import Path; from ser_worker import Recognizer\n"
        f"clips = sorted(Path({str(DATA)!r}).rglob('*.flac'))[:3]\n"
        "results = Recognizer().predict_files(clips)\n"
        "assert all(r.ok for r in results), results\n"
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def _replace(data: bytes, member: str, content: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as a, zipfile.ZipFile(out, "w") as b:
        for info in a.infolist():
            b.writestr(info, content if info.filename == member else a.read(info))
    return out.getvalue()


def _without_exports(data: bytes) -> bytes:
    """The bundle as written before exports existed: no .onnx files, no onnx entries."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as a, zipfile.ZipFile(out, "w") as b:
        for info in a.infolist():
            if info.filename.endswith(".onnx"):
                continue
            content = a.read(info)
            if info.filename == "manifest.json":
                manifest = json.loads(content)
                for entry in manifest["models"].values():
                    entry.pop("onnx", None)
                content = json.dumps(manifest, indent=2, sort_keys=True).encode()
            b.writestr(info, content)
    return out.getvalue()
