"""The speech encoder's head added to a freshly trained CNN bundle (experiment.add_encoder)."""

from pathlib import Path

import numpy as np
import pytest

from ser_worker.audio import load_audio, trim_silence
from ser_worker.bundle import Bundle, bundle_bytes, create_bundle, load_bundle
from ser_worker.datasets import Split, load_dataset
from ser_worker.features.study import FeatureSettings, fit_normalizer
from ser_worker.labels import EMOTIONS
from ser_worker.models.cnn import build_model
from ser_worker.models.registry import input_shape
from ser_worker.training.cache import extract_all
from ser_worker.training.experiment import add_encoder

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module")
def corpus():
    clips = load_dataset(DATA).clips
    untrimmed = [load_audio(clip.path, trim=False) for clip in clips]
    features = extract_all([trim_silence(y) for y in untrimmed], FeatureSettings())
    return clips, untrimmed, features


@pytest.fixture(scope="module")
def cnn_bundle(corpus) -> Bundle:
    _, _, features = corpus
    settings = FeatureSettings()
    models = {name: build_model(name, input_shape(name, settings)) for name in ("cnn1d", "cnn2d")}
    return create_bundle(
        models,
        feature_settings=settings,
        normalizer=fit_normalizer(features),
        licences=["RAVDESS: CC BY-NC-SA 4.0"],
        ensemble_weights={"cnn1d": 0.4, "cnn2d": 0.6},
    )


def split_of(clips, train_corpus: str) -> Split:
    train = tuple(i for i, clip in enumerate(clips) if clip.corpus == train_corpus)
    other = tuple(i for i, clip in enumerate(clips) if clip.corpus != train_corpus)
    return Split(train=train, val=other, test=other, protocol="test", description="test")


def test_the_head_learns_the_training_side_and_joins_the_ensemble(corpus, cnn_bundle):
    clips, untrimmed, features = corpus
    assert {clip.corpus for clip in clips} == {"ravdess", "tess"}
    # Trained on the six RAVDESS clips (one per class) and scored on them: a linear head on
    # 1,024 numbers separates six points, so every one must come out right.
    split = split_of(clips, "ravdess")
    split = Split(split.train, split.test, split.train, "test", "scored on its training side")
    bundle, metrics = add_encoder(cnn_bundle, features, untrimmed, clips, split)

    assert bundle.members == ("cnn1d", "cnn2d", "encoder")
    assert bundle.version != cnn_bundle.version
    weights = bundle.ensemble_weights
    assert sum(weights.values()) == pytest.approx(1.0)
    assert weights["cnn2d"] / weights["cnn1d"] == pytest.approx(0.6 / 0.4)
    assert metrics["encoder"]["accuracy"] == 1.0
    assert set(metrics) == {"cnn1d", "cnn2d", "encoder", "ensemble"}
    assert bundle.manifest.metrics == metrics
    assert any(
        licence.startswith("Speech encoder: Whisper base") for licence in bundle.manifest.licences
    )
    assert load_bundle(bundle_bytes(bundle)).encoder_head is not None


def test_a_training_side_without_every_class_gets_no_head(corpus, cnn_bundle):
    clips, untrimmed, features = corpus
    split = split_of(clips, "ravdess")
    without_sad = Split(
        tuple(i for i in split.train if clips[i].emotion != "SAD"), split.val, split.test, "t", "t"
    )
    assert {clips[i].emotion for i in without_sad.train} == set(EMOTIONS) - {"SAD"}
    bundle, _ = add_encoder(cnn_bundle, features, untrimmed, clips, without_sad)
    assert bundle is cnn_bundle
    assert np.isclose(sum(bundle.ensemble_weights.values()), 1.0)


def test_channel_copies_teach_the_head_and_validation_calibrates_the_ensemble(
    corpus, cnn_bundle, monkeypatch
):
    """With copies the head learns from 1 + copies rows per training clip, every copy read at
    the bundle's loudness, and the ensemble's temperature is fitted on the validation side."""
    import ser_worker.training.experiment as experiment
    from ser_worker.loudness import integrated_loudness

    clips, untrimmed, features = corpus
    split = split_of(clips, "ravdess")
    seen: list[int] = []
    loudness: list[float] = []
    real_embed = experiment.embed

    def counting_embed(waveforms, *args):
        seen.append(len(waveforms))
        loudness.extend(integrated_loudness(y, 16_000) for y in waveforms)
        return real_embed(waveforms, *args)

    monkeypatch.setattr(experiment, "embed", counting_embed)
    bundle, _ = add_encoder(cnn_bundle, features, untrimmed, clips, split, copies=2, seed=1)
    n_train = len(split.train)
    assert seen == [len(clips), n_train, n_train]
    # The copies (a random gain each) come back at the target loudness of new bundles.
    assert np.allclose(loudness[len(clips) :], -23.0, atol=0.05)
    calibration = bundle.manifest.calibration
    assert calibration is not None and calibration.temperature > 0
    assert calibration.uncertain_below == 0.5
    predictions = bundle.predict([untrimmed[i] for i in split.test], 16_000)
    assert all(p["ensemble"].uncertain == (p["ensemble"].confidence < 0.5) for p in predictions)


def test_per_submission_adaptation_reads_the_set_standardised(corpus, cnn_bundle):
    """The adapted head reads each submission's vectors standardised by the submission's own
    statistics: a common offset and scale of every vector (a recording setup) changes nothing."""
    from ser_worker.bundle.core import predict_probabilities
    from ser_worker.models.encoder import MIN_ADAPT_CLIPS

    clips, untrimmed, features = corpus
    split = split_of(clips, "ravdess")
    bundle, _ = add_encoder(cnn_bundle, features, untrimmed, clips, split, copies=1)
    loaded = load_bundle(bundle_bytes(bundle))
    assert loaded.can_adapt and loaded.manifest.encoder.adapted_head
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(MIN_ADAPT_CLIPS, loaded.encoder_head.coef.shape[1]))
    many = [features[i % len(features)] for i in range(MIN_ADAPT_CLIPS)]
    plain = predict_probabilities(loaded, many, encoder_vectors=vectors, adapt=True)
    shifted = predict_probabilities(
        loaded, many, encoder_vectors=3.0 * vectors + rng.normal(size=vectors.shape[1]), adapt=True
    )
    np.testing.assert_allclose(plain["encoder"], shifted["encoder"], atol=1e-4)
    np.testing.assert_allclose(plain["cnn2d"], shifted["cnn2d"])
    # Adapted, the ensemble is the adapted encoder alone unless the bundle records weights.
    from ser_worker.bundle.core import predict_features

    answers = predict_features(loaded, many, encoder_vectors=vectors, adapt=True)
    for i, answer in enumerate(answers):
        expected = plain["encoder"][i] / plain["encoder"][i].sum()
        got = np.array([answer["ensemble"].probabilities[k] for k in EMOTIONS])
        np.testing.assert_allclose(got, expected, atol=1e-6)
    with pytest.raises(ValueError, match=f"at least {MIN_ADAPT_CLIPS} clips"):
        predict_probabilities(loaded, many[:5], encoder_vectors=vectors[:5], adapt=True)
    with pytest.raises(ValueError, match="no adapted head"):
        predict_probabilities(cnn_bundle, many, adapt=True)
