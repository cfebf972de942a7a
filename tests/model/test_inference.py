from pathlib import Path

import numpy as np
import pytest

from ser_worker.audio import TooShortError, load_audio
from ser_worker.bundle import Bundle, MemberPrediction, create_bundle
from ser_worker.bundle.core import predict_features
from ser_worker.bundle.core import predict_waveforms as predict
from ser_worker.features.study import FeatureSettings, batch_inputs, fit_normalizer
from ser_worker.labels import EMOTIONS, SAMPLE_RATE
from ser_worker.models.cnn import build_model, compile_model, input_shape
from ser_worker.training.cache import extract_all

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return [load_audio(p) for p in sorted(DATA.rglob("*.flac"))]


@pytest.fixture(scope="module")
def bundle(clips) -> Bundle:
    settings = FeatureSettings()
    features = extract_all(clips, settings)
    normalizer = fit_normalizer(features)
    x1, x2 = batch_inputs(features, settings, normalizer)
    y = np.arange(len(clips)) % 6
    models = {}
    for name, x in (("cnn1d", x1), ("cnn2d", x2)):
        # A few steps so the two models disagree and outputs are not uniform.
        model = compile_model(build_model(name, input_shape(name, settings)), 1e-3)
        for _ in range(3):
            model.train_on_batch(x, y)
        models[name] = model
    return create_bundle(models, feature_settings=settings, normalizer=normalizer)


def test_prediction_from_probabilities():
    p = MemberPrediction.from_probabilities(np.array([0.1, 0.2, 0.3, 0.1, 0.2, 0.1], np.float32))
    assert p.emotion == "FEA"
    assert p.confidence == pytest.approx(0.3)
    assert list(p.probabilities) == list(EMOTIONS)
    assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-12)
    assert p.to_dict()["emotion"] == "FEA"


def test_predict_shapes_and_ensemble(bundle, clips):
    results = predict(bundle, clips)
    assert len(results) == len(clips)
    for clip in results:
        assert set(clip) == {"cnn1d", "cnn2d", "ensemble"}
        for prediction in clip.values():
            probs = np.array([prediction.probabilities[c] for c in EMOTIONS])
            assert probs.sum() == pytest.approx(1.0, abs=1e-9)
            assert prediction.emotion == EMOTIONS[int(probs.argmax())]
            assert prediction.confidence == probs.max()
        mean = [
            (clip["cnn1d"].probabilities[c] + clip["cnn2d"].probabilities[c]) / 2 for c in EMOTIONS
        ]
        np.testing.assert_allclose(
            [clip["ensemble"].probabilities[c] for c in EMOTIONS], mean, rtol=1e-6
        )


def test_ensemble_follows_the_bundle_weights(bundle, clips):
    weighted = Bundle(
        manifest={**bundle.manifest.to_dict(), "ensemble_weights": {"cnn1d": 0.2, "cnn2d": 0.8}},
        models=bundle.models,
    )
    for clip in predict(weighted, clips[:4]):
        expected = [
            0.2 * clip["cnn1d"].probabilities[c] + 0.8 * clip["cnn2d"].probabilities[c]
            for c in EMOTIONS
        ]
        np.testing.assert_allclose(
            [clip["ensemble"].probabilities[c] for c in EMOTIONS], expected, rtol=1e-6
        )


def test_predict_is_deterministic_and_chunking_does_not_matter(bundle, clips):
    first = predict(bundle, clips)
    again = predict(bundle, clips)
    assert first == again
    chunked = predict(bundle, clips, batch_size=5)
    for a, b in zip(first, chunked, strict=True):
        for name in a:
            assert a[name].emotion == b[name].emotion
            np.testing.assert_allclose(
                list(a[name].probabilities.values()),
                list(b[name].probabilities.values()),
                rtol=1e-4,
                atol=1e-6,
            )


def test_models_run_once_per_chunk(bundle, clips, monkeypatch):
    calls = {name: [] for name in bundle.models}
    for name, model in bundle.models.items():
        original = model.predict_on_batch

        def counting(x, _name=name, _original=original):
            calls[_name].append(len(x))
            return _original(x)

        monkeypatch.setattr(model, "predict_on_batch", counting)
    predict(bundle, clips, batch_size=5)
    expected = [5, 5, len(clips) - 10]
    assert calls == {"cnn1d": expected, "cnn2d": expected}


def test_predict_features_matches_predict(bundle, clips):
    features = extract_all(clips[:3], bundle.feature_settings)
    assert predict_features(bundle, features) == predict(bundle, clips[:3])


def test_empty_input_and_bad_batch_size(bundle, clips):
    assert predict(bundle, []) == []
    with pytest.raises(ValueError, match="batch_size"):
        predict(bundle, clips, batch_size=0)


def test_single_model_bundle_ensemble_is_that_model(bundle, clips):
    only_2d = create_bundle(
        {"cnn2d": bundle.models["cnn2d"]},
        feature_settings=bundle.feature_settings,
        normalizer=bundle.normalizer,
    )
    for clip in predict(only_2d, clips[:4]):
        assert set(clip) == {"cnn2d", "ensemble"}
        assert clip["ensemble"] == clip["cnn2d"]


def test_encoder_head_reads_the_untrimmed_clips_and_joins_the_ensemble(bundle):
    from ser_worker.models.encoder import POOLING, LinearHead, load_encoder

    paths = sorted(DATA.rglob("*.flac"))[:4]
    untrimmed = [load_audio(p, trim=False) for p in paths]
    trimmed = [load_audio(p) for p in paths]
    # New bundles pool the speech frames beside all of them: the bundle must read the same.
    vectors = load_encoder().embed(untrimmed, POOLING)
    # Random weights on standardised vectors: outputs that differ from clip to clip.
    rng = np.random.default_rng(0)
    head = LinearHead(
        EMOTIONS,
        vectors.mean(axis=0),
        vectors.std(axis=0) + 1e-3,
        rng.normal(size=(len(EMOTIONS), vectors.shape[1])).astype(np.float32) * 0.1,
        np.zeros(len(EMOTIONS), np.float32),
    )
    with_encoder = create_bundle(
        bundle.models,
        feature_settings=bundle.feature_settings,
        normalizer=bundle.normalizer,
        encoder_head=head,
        ensemble_weights={"cnn1d": 0.25, "cnn2d": 0.25, "encoder": 0.5},
    )
    results = predict(with_encoder, trimmed, untrimmed=untrimmed)
    expected = head.probabilities(vectors)
    for clip, encoder_p in zip(results, expected, strict=True):
        assert set(clip) == {"cnn1d", "cnn2d", "encoder", "ensemble"}
        np.testing.assert_allclose(
            [clip["encoder"].probabilities[c] for c in EMOTIONS], encoder_p, rtol=1e-5
        )
        mixed = [
            0.25 * clip["cnn1d"].probabilities[c]
            + 0.25 * clip["cnn2d"].probabilities[c]
            + 0.5 * clip["encoder"].probabilities[c]
            for c in EMOTIONS
        ]
        np.testing.assert_allclose(
            [clip["ensemble"].probabilities[c] for c in EMOTIONS], mixed, rtol=1e-5
        )
    # Trimmed clips give other encoder vectors: the head sees what the caller hands it.
    on_trimmed = predict(with_encoder, trimmed)
    assert any(
        not np.allclose(
            [a["encoder"].probabilities[c] for c in EMOTIONS],
            [b["encoder"].probabilities[c] for c in EMOTIONS],
        )
        for a, b in zip(results, on_trimmed, strict=True)
    )


def test_prepare_trims_for_the_cnns_and_not_for_the_encoder(bundle):
    from ser_worker.audio import trim_silence
    from ser_worker.bundle.preprocess import at_loudness

    y = load_audio(sorted(DATA.rglob("*.flac"))[0], trim=False)
    clip = bundle.prepare(y, SAMPLE_RATE)
    # New bundles read every clip at one loudness, before anything is trimmed.
    level = at_loudness(y, bundle.manifest.member_preprocessing)
    assert bundle.manifest.member_preprocessing.loudness is not None
    np.testing.assert_array_equal(clip.cnn, trim_silence(level))
    np.testing.assert_array_equal(clip.encoder, level)
    assert clip.duration_s == len(clip.cnn) / SAMPLE_RATE < len(y) / SAMPLE_RATE
    # The manifest's threshold is the one applied: a lower one cuts more.
    manifest = bundle.manifest.to_dict()
    manifest["preprocessing"] = {"cnn": {"trim": True, "trim_top_db": 20}}
    stricter = Bundle(manifest=manifest, models=bundle.models).prepare(y, SAMPLE_RATE)
    assert len(stricter.cnn) < len(clip.cnn)


def test_prepare_resamples_and_rejects_short_clips(bundle):
    import soxr

    y = load_audio(sorted(DATA.rglob("*.flac"))[0], trim=False)
    clip = bundle.prepare(soxr.resample(y, SAMPLE_RATE, 44_100, quality="HQ"), 44_100)
    assert abs(len(clip.encoder) - len(y)) <= 1
    blip = 0.5 * np.sin(np.arange(800) * 0.3)
    with pytest.raises(TooShortError, match="after trimming"):
        bundle.prepare(np.concatenate([np.zeros(8000), blip, np.zeros(8000)]), SAMPLE_RATE)
    with pytest.raises(TooShortError):
        bundle.prepare(y[:1000], SAMPLE_RATE)
    with pytest.raises(ValueError, match="mono"):
        bundle.prepare(np.stack([y, y]), SAMPLE_RATE)


def test_bundle_predict_is_prepare_then_predict_prepared(bundle):
    from ser_worker.audio import trim_silence
    from ser_worker.bundle.preprocess import at_loudness

    paths = sorted(DATA.rglob("*.flac"))[:4]
    decoded = [load_audio(p, trim=False) for p in paths]
    untrimmed = [at_loudness(y, bundle.manifest.member_preprocessing) for y in decoded]
    trimmed = [trim_silence(y) for y in untrimmed]
    results = bundle.predict(decoded, SAMPLE_RATE)
    assert results == predict(bundle, trimmed, untrimmed=untrimmed)
    prepared = [bundle.prepare(y, SAMPLE_RATE) for y in decoded]
    assert bundle.predict_prepared(prepared, batch_size=3) == predict(
        bundle, trimmed, untrimmed=untrimmed, batch_size=3
    )
    assert bundle.predict([], SAMPLE_RATE) == []


def test_the_ensemble_rule():
    from ser_worker.evaluation.ensemble import mix, normalised_weights

    assert normalised_weights(None, ["cnn1d", "cnn2d"]) == {"cnn1d": 0.5, "cnn2d": 0.5}
    assert normalised_weights({"a": 1, "b": 3}, ["a", "b"]) == {"a": 0.25, "b": 0.75}
    for bad in ({"a": 1}, {"a": 0, "b": 0}):
        with pytest.raises(ValueError):
            normalised_weights(bad, ["a", "b"])
    p = {"a": np.array([[1.0, 0.0]]), "b": np.array([[0.0, 1.0]]), "unused": np.ones((1, 2))}
    np.testing.assert_allclose(mix(p, {"a": 1, "b": 3}), [[0.25, 0.75]])
    np.testing.assert_allclose(mix({"a": p["a"][0]}, {"a": 2.0}), [1.0, 0.0])
