import hashlib
import io
import json
import re
import subprocess
import sys
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from ser_worker.audio import load_audio
from ser_worker.bundle import (
    FORMAT,
    Bundle,
    BundleError,
    bundle_bytes,
    create_bundle,
    load_bundle,
    make_version,
    read_manifest,
    save_bundle,
    shipped_bundle_bytes,
    verify_bundle_bytes,
)
from ser_worker.bundle.core import predict_probabilities
from ser_worker.bundle.manifest import Preprocessing
from ser_worker.features.study import FeatureSettings, fit_normalizer
from ser_worker.labels import EMOTIONS
from ser_worker.models.cnn import build_model, compile_model, input_shape
from ser_worker.training.cache import extract_all

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    paths = sorted(DATA.rglob("*.flac"))
    assert len(paths) >= 6, "tests/data should hold the real test clips"
    return [load_audio(p) for p in paths]


@pytest.fixture(scope="module")
def bundle(clips) -> Bundle:
    settings = FeatureSettings()
    features = extract_all(clips, settings)
    normalizer = fit_normalizer(features)
    models = {name: build_model(name, input_shape(name, settings)) for name in ("cnn1d", "cnn2d")}
    # A few real training steps move every weight and BatchNormalization's moving statistics
    # away from their initial values, so a round trip that dropped any of them would show.
    from ser_worker.features.study import batch_inputs

    x1, x2 = batch_inputs(features, settings, normalizer)
    y = np.arange(len(clips)) % 6
    for name, x in (("cnn1d", x1), ("cnn2d", x2)):
        compile_model(models[name])
        for _ in range(2):
            models[name].train_on_batch(x, y)
    return create_bundle(
        models,
        feature_settings=settings,
        normalizer=normalizer,
        split={"protocol": "random", "train": 12},
        history={"cnn1d": {"loss": [1.0]}},
        metrics={"ensemble": {"accuracy": 0.5}},
        training_data={"corpora": ["RAVDESS", "TESS"], "clips": len(clips)},
        licences=["CC BY-NC-SA 4.0 (RAVDESS)", "CC BY-NC-ND 4.0 (TESS)"],
        notes="unit test",
        created_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


@pytest.fixture(scope="module")
def bundle_file(bundle, tmp_path_factory) -> Path:
    return save_bundle(bundle, tmp_path_factory.mktemp("bundles") / "model.zip")


def test_manifest_contents(bundle):
    m = bundle.manifest.to_dict()
    assert m["format"] == FORMAT
    assert re.fullmatch(r"20250102T030405Z-[0-9a-f]{8}", m["version"])
    assert m["created_at"] == "2025-01-02T03:04:05+00:00"
    assert m["labels"] == list(EMOTIONS)
    assert m["models"]["cnn1d"]["input_shape"] == [800, 1]
    assert m["models"]["cnn2d"]["input_shape"] == [128, FeatureSettings().mel_frames, 1]
    assert m["models"]["cnn2d"]["parameters"] == 1_620_102
    assert m["feature_settings"] == FeatureSettings().to_dict()
    assert set(m["normalizer"]) >= {"mel_mean", "mel_std", "zcr_mean"}
    assert m["licences"] and m["training_data"]["clips"] == 12
    assert m["code_version"]["ser"] == "0.1.0"
    assert m["preprocessing"] == {
        "sample_rate": 16_000,
        "loudness": {"method": "bs1770-after-peak", "target_lufs": -23.0},
        "cnn": {"trim": True, "trim_top_db": 60.0},
        "encoder": {"trim": False},
    }
    json.dumps(m)  # the manifest must be plain JSON


def test_version_depends_on_weights(bundle):
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert make_version(when, "abcdef0123") == "20250102T030405Z-abcdef01"
    other = create_bundle(
        {"cnn1d": build_model("cnn1d", (800, 1))},
        feature_settings=bundle.feature_settings,
        normalizer=bundle.normalizer,
        created_at=when,
    )
    assert other.version != bundle.version
    assert other.version.startswith("20250102T030405Z-")


def test_round_trip_predictions_identical(bundle, bundle_file, clips):
    features = extract_all(clips, bundle.feature_settings)
    before = predict_probabilities(bundle, features)
    for source in (bundle_file, bundle_file.read_bytes(), bundle_bytes(bundle)):
        # Keras for a bit-exact round trip; the ONNX exports (within 1e-4): tests/model/test_onnx.py
        loaded = load_bundle(source, runtime="keras")
        assert loaded.manifest == bundle.manifest
        assert loaded.version == bundle.version
        assert loaded.labels == EMOTIONS
        assert loaded.feature_settings == bundle.feature_settings
        np.testing.assert_array_equal(loaded.normalizer.mel_std, bundle.normalizer.mel_std)
        after = predict_probabilities(loaded, features)
        for name in ("cnn1d", "cnn2d"):
            np.testing.assert_array_equal(after[name], before[name])
            for w_loaded, w_orig in zip(
                loaded.models[name].get_weights(), bundle.models[name].get_weights(), strict=True
            ):
                np.testing.assert_array_equal(w_loaded, w_orig)


def test_bundle_holds_weights_only(bundle_file):
    with zipfile.ZipFile(bundle_file) as archive:
        names = sorted(archive.namelist())
    assert names == [
        "cnn1d.onnx",
        "cnn1d.weights.h5",
        "cnn2d.onnx",
        "cnn2d.weights.h5",
        "manifest.json",
    ]
    # Weights only, no optimizer state: float32 parameters plus the small h5 overhead, twice
    # (the weights file and the ONNX export of the same weights).
    assert bundle_file.stat().st_size < 2 * (587_526 + 1_620_102) * 4 * 1.1


def test_read_manifest_does_not_import_keras(bundle_file):
    code = (
        "import sys; from ser_worker.bundle import read_manifest;"
        f"m = read_manifest({str(bundle_file)!r}); print(m.version);"
        "print([name for name in ('keras', 'tensorflow') if name in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    version, imported = result.stdout.strip().splitlines()
    assert version == read_manifest(bundle_file).version
    assert imported == "[]"


def _rewrite(source: Path, *, drop: str | None = None, manifest_patch: dict | None = None) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(out, "w") as new:
        for name in old.namelist():
            if name == drop:
                continue
            data = old.read(name)
            if name == "manifest.json" and manifest_patch is not None:
                manifest = json.loads(data)
                manifest.update(manifest_patch)
                data = json.dumps(manifest).encode()
            new.writestr(name, data)
    return out.getvalue()


def test_missing_file_raises(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nope.zip")
    with pytest.raises(BundleError, match="not found"):
        read_manifest(tmp_path / "nope.zip")


def test_corrupt_zip_raises(bundle_file):
    data = bundle_file.read_bytes()
    with pytest.raises(BundleError, match="zip"):
        load_bundle(b"definitely not a zip file")
    with pytest.raises(BundleError):
        load_bundle(data[: len(data) // 2])
    # Flip bytes inside the compressed weights: the zip's CRC check must catch it.
    with zipfile.ZipFile(bundle_file) as archive:
        info = archive.getinfo("cnn2d.weights.h5")
    start = info.header_offset + 200
    flipped = data[:start] + bytes(b ^ 0xFF for b in data[start : start + 64]) + data[start + 64 :]
    with pytest.raises(BundleError, match="cnn2d"):
        load_bundle(flipped)


def test_missing_weights_raises(bundle_file):
    with pytest.raises(BundleError, match="cnn2d.weights.h5"):
        load_bundle(_rewrite(bundle_file, drop="cnn2d.weights.h5"))


def test_missing_manifest_raises(bundle_file):
    with pytest.raises(BundleError, match="manifest.json"):
        read_manifest(_rewrite(bundle_file, drop="manifest.json"))


def test_wrong_labels_raise(bundle_file):
    patched = _rewrite(bundle_file, manifest_patch={"labels": ["ANG", "HAP", "SAD"]})
    with pytest.raises(BundleError, match="labels"):
        load_bundle(patched)
    with pytest.raises(BundleError, match="labels"):
        read_manifest(patched)


def test_ensemble_weights_are_checked_and_normalised(bundle_file):
    for bad in ({"cnn2d": 1.0}, {"cnn1d": -1.0, "cnn2d": 2.0}, {"cnn1d": 0, "cnn2d": 0}):
        with pytest.raises(BundleError, match="ensemble_weights"):
            read_manifest(_rewrite(bundle_file, manifest_patch={"ensemble_weights": bad}))
    weighted = load_bundle(
        _rewrite(bundle_file, manifest_patch={"ensemble_weights": {"cnn1d": 1, "cnn2d": 3}})
    )
    assert weighted.ensemble_weights == {"cnn1d": 0.25, "cnn2d": 0.75}
    assert load_bundle(bundle_file).ensemble_weights == {"cnn1d": 0.5, "cnn2d": 0.5}


def test_wrong_format_raises(bundle_file):
    with pytest.raises(BundleError, match="format"):
        read_manifest(_rewrite(bundle_file, manifest_patch={"format": "ser-bundle/99"}))


def test_shape_mismatch_raises(bundle, bundle_file):
    models = bundle.manifest.to_dict()["models"]
    models["cnn1d"]["input_shape"] = [400, 1]
    with pytest.raises(BundleError, match="cnn1d"):
        load_bundle(_rewrite(bundle_file, manifest_patch={"models": models}))


def test_garbage_weights_raise(bundle_file):
    out = io.BytesIO()
    with zipfile.ZipFile(bundle_file) as old, zipfile.ZipFile(out, "w") as new:
        for name in old.namelist():
            data = b"\x00" * 1000 if name == "cnn1d.weights.h5" else old.read(name)
            new.writestr(name, data)
    with pytest.raises(BundleError, match="cnn1d"):
        load_bundle(out.getvalue())


def test_unknown_model_name_raises(bundle):
    with pytest.raises(BundleError, match="models"):
        create_bundle(
            {"rnn": bundle.models["cnn1d"]},
            feature_settings=bundle.feature_settings,
            normalizer=bundle.normalizer,
        )


def test_save_is_atomic_and_overwrites(bundle, tmp_path):
    path = tmp_path / "nested" / "b.zip"
    save_bundle(bundle, path)
    save_bundle(bundle, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["b.zip"]
    assert read_manifest(path).version == bundle.version


def small_head(seed: int = 0, layers: tuple[int, ...] | None = None, pooling: str | None = None):
    from ser_worker.models.encoder import LAYERS, POOLING, LinearHead, embedding_size

    size = embedding_size(layers or LAYERS, pooling or POOLING)
    rng = np.random.default_rng(seed)
    return LinearHead(
        EMOTIONS,
        rng.normal(size=size).astype(np.float32),
        np.abs(rng.normal(size=size)).astype(np.float32) + 0.5,
        rng.normal(size=(len(EMOTIONS), size)).astype(np.float32),
        rng.normal(size=len(EMOTIONS)).astype(np.float32),
    )


@pytest.fixture(scope="module")
def encoder_bundle(bundle) -> Bundle:
    return create_bundle(
        bundle.models,
        feature_settings=bundle.feature_settings,
        normalizer=bundle.normalizer,
        encoder_head=small_head(),
        ensemble_weights={"cnn1d": 0.2, "cnn2d": 0.3, "encoder": 0.5},
        created_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def test_encoder_head_round_trips_and_joins_the_ensemble(bundle, encoder_bundle, clips):
    from ser_worker.models.encoder import LAYERS, MODEL_SHA256, POOLING, embedding_size

    assert encoder_bundle.members == ("cnn1d", "cnn2d", "encoder")
    assert encoder_bundle.manifest.encoder.weights_sha256 == MODEL_SHA256
    assert encoder_bundle.encoder_layers == LAYERS
    assert encoder_bundle.encoder_pooling == POOLING
    assert encoder_bundle.version != bundle.version
    loaded = load_bundle(bundle_bytes(encoder_bundle))
    assert loaded.manifest == encoder_bundle.manifest
    assert loaded.ensemble_weights == {"cnn1d": 0.2, "cnn2d": 0.3, "encoder": 0.5}
    for field in ("mean", "scale", "coef", "intercept"):
        np.testing.assert_array_equal(
            getattr(loaded.encoder_head, field), getattr(encoder_bundle.encoder_head, field)
        )
    features = extract_all(clips[:2], bundle.feature_settings)
    size = embedding_size(LAYERS, POOLING)
    vectors = np.random.default_rng(1).normal(size=(2, size)).astype(np.float32)
    outputs = predict_probabilities(loaded, features, encoder_vectors=vectors)
    np.testing.assert_array_equal(
        outputs["encoder"], encoder_bundle.encoder_head.probabilities(vectors)
    )
    with pytest.raises(ValueError, match="encoder vector"):
        predict_probabilities(loaded, features)


def test_encoder_bundle_checks_its_weights_and_head(encoder_bundle, tmp_path):
    path = save_bundle(encoder_bundle, tmp_path / "encoder.zip")
    with pytest.raises(BundleError, match="ensemble_weights"):
        read_manifest(_rewrite(path, manifest_patch={"ensemble_weights": {"cnn1d": 1, "cnn2d": 1}}))
    entry = encoder_bundle.manifest.to_dict()["encoder"]
    other_weights = {**entry, "weights_sha256": "0" * 64}
    with pytest.raises(BundleError, match="other encoder weights"):
        load_bundle(_rewrite(path, manifest_patch={"encoder": other_weights}))
    out = io.BytesIO()
    with zipfile.ZipFile(path) as old, zipfile.ZipFile(out, "w") as new:
        for name in old.namelist():
            new.writestr(name, b"not an npz" if name == "encoder_head.npz" else old.read(name))
    with pytest.raises(BundleError, match="encoder head is corrupt"):
        load_bundle(out.getvalue())
    other_layers = {**entry, "layers": [2, 6]}
    with pytest.raises(BundleError, match=r"vectors of encoder layers \[6\]"):
        load_bundle(_rewrite(path, manifest_patch={"encoder": {**other_layers, "layers": [6]}}))
    with pytest.raises(BundleError, match="layers are not usable"):
        load_bundle(_rewrite(path, manifest_patch={"encoder": {**other_layers, "layers": [6, 3]}}))
    with pytest.raises(BundleError, match="unknown encoder pooling 'speech'"):
        read_manifest(_rewrite(path, manifest_patch={"encoder": {**entry, "pooling": "speech"}}))
    # A head fitted on both poolings cannot read the plain vectors alone.
    with pytest.raises(BundleError, match="pooled 'all'"):
        load_bundle(_rewrite(path, manifest_patch={"encoder": {**entry, "pooling": "all"}}))


def test_a_head_on_the_last_block_alone_still_loads(bundle, tmp_path):
    """Bundles from before block 3 was pooled record no layers: their heads read block 6; nor
    any pooling: their heads read every frame alike ("all")."""
    old_head = small_head(layers=(6,), pooling="all")
    with pytest.raises(BundleError, match="does not map"):
        create_bundle(
            bundle.models,
            feature_settings=bundle.feature_settings,
            normalizer=bundle.normalizer,
            encoder_head=old_head,
        )
    made = create_bundle(
        bundle.models,
        feature_settings=bundle.feature_settings,
        normalizer=bundle.normalizer,
        encoder_head=old_head,
        encoder_layers=(6,),
        encoder_pooling="all",
    )
    path = save_bundle(made, tmp_path / "old.zip")
    entry = {
        k: v
        for k, v in made.manifest.to_dict()["encoder"].items()
        if k not in ("layers", "pooling")
    }
    loaded = load_bundle(_rewrite(path, manifest_patch={"encoder": entry}))
    assert loaded.encoder_layers == (6,)
    assert loaded.encoder_pooling == "all"
    np.testing.assert_array_equal(loaded.encoder_head.coef, old_head.coef)


def test_verify_bundle_bytes_checks_checksum_manifest_and_crcs(bundle_file):
    data = bundle_file.read_bytes()
    verify_bundle_bytes(data, hashlib.sha256(data).hexdigest())
    with pytest.raises(BundleError, match="missing"):
        verify_bundle_bytes(None, hashlib.sha256(data).hexdigest())
    with pytest.raises(BundleError, match="checksum"):
        verify_bundle_bytes(data, hashlib.sha256(b"other").hexdigest())
    with zipfile.ZipFile(bundle_file) as archive:
        start = archive.getinfo("cnn2d.weights.h5").header_offset + 200
    flipped = data[:start] + bytes(b ^ 0xFF for b in data[start : start + 64]) + data[start + 64 :]
    with pytest.raises(BundleError, match="corrupt"):
        verify_bundle_bytes(flipped, hashlib.sha256(flipped).hexdigest())
    patched = _rewrite(bundle_file, manifest_patch={"format": "ser-bundle/99"})
    with pytest.raises(BundleError, match="format"):
        verify_bundle_bytes(patched, hashlib.sha256(patched).hexdigest())


def test_the_shipped_manifest_round_trips_byte_for_byte():
    data = shipped_bundle_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        stored = archive.read("manifest.json")
    manifest = read_manifest(data)
    assert json.dumps(manifest.to_dict(), indent=2, sort_keys=True).encode() == stored
    assert manifest.encoder.layers == [3, 6] and manifest.members == ("cnn1d", "cnn2d", "encoder")
    # Trained since preprocessing was recorded: every member at one loudness (issue #14).
    from ser_worker.bundle.manifest import CURRENT_PREPROCESSING

    assert manifest.preprocessing == CURRENT_PREPROCESSING
    assert manifest.member_preprocessing.cnn.trim and not manifest.member_preprocessing.encoder.trim
    assert manifest.encoder.adapted_head and manifest.calibration.temperature != 1.0


def test_unknown_manifest_keys_are_kept(bundle_file):
    extra = {"future": {"numbers": [1, 2.5], "flag": None}}
    patched = _rewrite(bundle_file, manifest_patch=extra)
    assert read_manifest(patched).to_dict()["future"] == extra["future"]
    rewritten = read_manifest(bundle_bytes(load_bundle(patched)))
    assert rewritten.to_dict() == read_manifest(patched).to_dict()


def test_a_new_bundle_answers_the_same_whatever_the_recording_level(encoder_bundle):
    """Issue #14's invariance by construction: every member of a bundle with loudness
    normalisation gives the same probabilities for a clip 20 dB quieter, 10 dB louder (kept
    under full scale) or peak-normalised; a bundle without it (as the shipped one was) does not."""
    from ser_worker.bundle.manifest import Calibration
    from ser_worker.features import channel

    y = load_audio(sorted(DATA.rglob("*.flac"))[0], trim=False)
    calibrated = create_bundle(
        encoder_bundle.models,
        feature_settings=encoder_bundle.feature_settings,
        normalizer=encoder_bundle.normalizer,
        encoder_head=encoder_bundle.encoder_head,
        ensemble_weights={"cnn1d": 0.2, "cnn2d": 0.3, "encoder": 0.5},
        calibration=Calibration(temperature=1.5),
    )
    assert calibrated.manifest.preprocessing.loudness is not None
    versions = [
        y,
        channel.gain(y, -20.0),
        channel.gain_with_guard(y, 10.0),
        channel.peak_normalised(y),
    ]
    answers = calibrated.predict(versions, 16_000)
    for answer in answers[1:]:
        for member in ("cnn1d", "cnn2d", "encoder", "ensemble"):
            a, b = answer[member].probabilities, answers[0][member].probabilities
            assert max(abs(a[k] - b[k]) for k in a) < 1e-4, member
    legacy = {**calibrated.manifest.to_dict(), "preprocessing": Preprocessing().model_dump()}
    as_decoded = Bundle(legacy, calibrated.models, calibrated.encoder_head)
    from ser_worker.bundle.core import encoder_vectors

    def vectors(bundle):
        return encoder_vectors(bundle, [bundle.prepare(v, 16_000).encoder for v in versions[:2]])

    def cosine(pair):
        return float(pair[0] @ pair[1] / np.linalg.norm(pair[0]) / np.linalg.norm(pair[1]))

    # The int8 encoder rounds its activations, so equal waveforms up to float noise give
    # vectors equal up to that rounding, not bit for bit.
    legacy, new = cosine(vectors(as_decoded)), cosine(vectors(calibrated))
    assert new > 0.9999 and legacy < 0.999, (new, legacy)


def test_expected_figures_attach_without_changing_the_version(bundle_file):
    from ser_worker.bundle.exports import with_expected_metrics

    old = bundle_file.read_bytes()
    new = with_expected_metrics(old, {"ensemble": {"macro_f1": 0.79}})
    assert read_manifest(new).version == read_manifest(old).version
    assert read_manifest(new).expected_metrics == {"ensemble": {"macro_f1": 0.79}}
    with zipfile.ZipFile(bundle_file) as a, zipfile.ZipFile(io.BytesIO(new)) as b:
        assert a.namelist() == b.namelist()
        for name in a.namelist():
            if name != "manifest.json":
                assert a.read(name) == b.read(name)
    assert load_bundle(new).version == read_manifest(old).version
