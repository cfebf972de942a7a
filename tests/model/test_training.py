import time
from pathlib import Path

import numpy as np
import pytest

from ser_worker.features.study import (
    ClipFeatures,
    FeatureSettings,
    batch_inputs,
    fit_normalizer,
    input_2d,
)
from ser_worker.labels import EMOTIONS
from ser_worker.training.batches import (
    FREQ_MASK_MAX_FRACTION,
    FREQ_MASKS,
    TIME_MASK_MAX_FRACTION,
    TIME_MASKS,
    TrainingBatches,
)
from ser_worker.training.cache import (
    balanced_class_weights,
    build_cache,
    extract_all,
    label_indices,
)
from ser_worker.training.config import TrainConfig
from ser_worker.training.fit import train, train_on_features

SMALL = FeatureSettings(n_mels=32, mel_frames=32, seq_frames=50)


def _features(n_frames: list[int], n_mels: int = 32, seed: int = 0) -> list[ClipFeatures]:
    rng = np.random.default_rng(seed)
    return [
        ClipFeatures(
            zcr=rng.random(n).astype(np.float32),
            energy=rng.random(n).astype(np.float32),
            mel_db=rng.normal(-40, 10, (n_mels, n)).astype(np.float32),
        )
        for n in n_frames
    ]


def _cache(tmp_path: Path, n_frames: list[int], y: list[int] | None = None):
    features = _features(n_frames)
    normalizer = fit_normalizer(features)
    labels = np.array(y if y is not None else [i % 6 for i in range(len(features))], np.int32)
    cache = build_cache(features, labels, normalizer, SMALL, tmp_path)
    return features, normalizer, cache


def _batches(cache, **overrides) -> TrainingBatches:
    options = dict(batch_size=4, class_weights=None, random_crop=False, spec_augment=False, seed=1)
    options.update(overrides)
    return TrainingBatches(cache, "cnn2d", SMALL, **options)


def _all_items(batches: TrainingBatches, ids_per_batch: bool = False):
    xs, ys, orders = [], [], []
    for i in range(len(batches)):
        x, y = batches[i][:2]
        xs.append(x)
        ys.append(y)
        orders.append(np.sort(batches.order[i * batches.batch_size : (i + 1) * batches.batch_size]))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(orders)


def test_cache_lives_in_memmaps_under_cache_dir(tmp_path):
    _, _, cache = _cache(tmp_path, [20, 32, 50, 61])
    for array, name in ((cache.x1, "train_x1.npy"), (cache.mel, "train_mel.npy")):
        assert isinstance(array, np.memmap)
        assert Path(array.filename) == tmp_path / name
        assert not array.flags.writeable
    assert cache.x1.shape == (4, 100, 1)
    # The stored width covers the longest clip, rounded up to a multiple of 16.
    assert cache.width == 64
    assert cache.mel.shape == (4, 32, 64, 1)


def test_stored_width_is_capped(tmp_path):
    _, _, cache = _cache(tmp_path, [20, 500])
    assert cache.width == 2 * SMALL.mel_frames
    assert cache.lengths.tolist() == [20, 64]
    _, _, cache = _cache(tmp_path, [20, 40])
    assert cache.width == 48


def test_batches_without_augmentation_equal_input_2d(tmp_path):
    # Short, exact and long clips, including odd lengths where centring rounds.
    features, normalizer, cache = _cache(tmp_path, [7, 20, 31, 32, 33, 50, 63, 64])
    x, y, order = _all_items(_batches(cache))
    _, expected = batch_inputs(features, SMALL, normalizer)
    np.testing.assert_array_equal(x, expected[order])
    np.testing.assert_array_equal(y, cache.y[order])


def test_random_crops_are_real_input_2d_windows(tmp_path):
    features, normalizer, cache = _cache(tmp_path, [64] * 8)
    batches = _batches(cache, random_crop=True)
    seen_offsets = set()
    for epoch in range(3):
        x, _, order = _all_items(batches)
        for crop, clip in zip(x, order, strict=True):
            candidates = [
                k
                for k in range(64 - 32 + 1)
                if np.array_equal(crop, input_2d(features[clip], SMALL, normalizer, offset=k))
            ]
            assert candidates, f"epoch {epoch}: crop of clip {clip} is no input_2d window"
            seen_offsets.add(candidates[0])
        batches.on_epoch_end()
    assert len(seen_offsets) > 5


def test_short_clips_are_never_cropped(tmp_path):
    features, normalizer, cache = _cache(tmp_path, [10, 20, 30, 32])
    x, _, order = _all_items(_batches(cache, random_crop=True))
    _, expected = batch_inputs(features, SMALL, normalizer)
    np.testing.assert_array_equal(x, expected[order])


def test_spec_augment_masks_bands_and_frames(tmp_path):
    features, normalizer, cache = _cache(tmp_path, [32] * 8)
    plain, _, order = _all_items(_batches(cache))
    masked, _, masked_order = _all_items(_batches(cache, spec_augment=True))
    np.testing.assert_array_equal(order, masked_order)
    changed = masked != plain
    assert changed.any()
    # Masking only ever writes zeros (the band mean), and within the configured widths.
    assert np.all(masked[changed] == 0)
    max_bands = FREQ_MASKS * int(32 * FREQ_MASK_MAX_FRACTION)
    max_frames = TIME_MASKS * int(32 * TIME_MASK_MAX_FRACTION)
    for clip in masked[..., 0]:
        zero_rows = np.all(clip == 0, axis=1).sum()
        zero_cols = np.all(clip == 0, axis=0).sum()
        assert zero_rows <= max_bands
        assert zero_cols <= max_frames


def test_shuffle_changes_per_epoch_and_is_seeded(tmp_path):
    _, _, cache = _cache(tmp_path, [32] * 12)
    a, b = _batches(cache, seed=5), _batches(cache, seed=5)
    first = a.order.copy()
    assert sorted(first) == list(range(12))
    a.on_epoch_end()
    assert not np.array_equal(first, a.order)
    b.on_epoch_end()
    np.testing.assert_array_equal(a.order, b.order)
    assert not np.array_equal(first, _batches(cache, seed=6).order)


def test_remainder_batch_is_dropped_and_weights_follow_classes(tmp_path):
    y = [0] * 6 + [1] * 3 + [2] * 1
    _, _, cache = _cache(tmp_path, [32] * 10, y=y)
    weights = balanced_class_weights(cache.y)
    batches = _batches(cache, class_weights=weights, batch_size=4)
    assert len(batches) == 2
    x, labels, sample_weights = batches[0]
    assert x.shape == (4, 32, 32, 1)
    np.testing.assert_allclose(sample_weights, weights[labels])
    # The 1D model reads the same cache.
    x1 = TrainingBatches(
        cache,
        "cnn1d",
        SMALL,
        batch_size=4,
        class_weights=None,
        random_crop=True,
        spec_augment=True,
        seed=0,
    )[0][0]
    assert x1.shape == (4, 100, 1)


def test_balanced_class_weights_and_labels():
    y = label_indices(["ANG", "ANG", "ANG", "SAD"])
    np.testing.assert_allclose(balanced_class_weights(y), [4 / 6, 1, 1, 1, 1, 4 / 2])
    with pytest.raises(ValueError, match="XYZ"):
        label_indices(["ANG", "XYZ"])


def test_config_validation():
    with pytest.raises(ValueError, match="models"):
        TrainConfig(models=("rnn",))
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="float16")
    assert TrainConfig().to_dict()["feature_settings"] == FeatureSettings().to_dict()


def _tones(n_per_class: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    # One pitch per class, with noise: learnable, but it exercises the real feature code.
    rng = np.random.default_rng(seed)
    t = np.arange(16_000) / 16_000
    waves, labels = [], []
    for k, code in enumerate(EMOTIONS):
        for _ in range(n_per_class):
            y = 0.3 * np.sin(2 * np.pi * (200 + 150 * k) * t) + 0.02 * rng.standard_normal(t.size)
            waves.append(y.astype(np.float32))
            labels.append(code)
    return waves, labels


def test_train_end_to_end_tiny(tmp_path):
    train_w, train_y = _tones(3, seed=0)
    val_w, val_y = _tones(1, seed=1)
    messages: list[str] = []
    config = TrainConfig(epochs=2, batch_size=6, augment_copies=2, feature_settings=SMALL, seed=3)
    result = train(
        train_w,
        train_y,
        val_w,
        val_y,
        config,
        cache_dir=tmp_path / "cache",
        progress=messages.append,
    )

    assert set(result.models) == {"cnn1d", "cnn2d"}
    assert result.models["cnn2d"].input_shape == (None, 32, 32, 1)
    for name in ("cnn1d", "cnn2d"):
        assert result.epochs_run[name] == 2
        assert 1 <= result.best_epoch[name] <= 2
        assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(result.history[name])
        assert all(len(v) == 2 for v in result.history[name].values())
        epoch_lines = [m for m in messages if m.startswith(f"{name} epoch")]
        assert len(epoch_lines) == 2
        assert "val_accuracy" in epoch_lines[0]
    assert result.seconds > 0

    # Normalizer statistics come from the original clips only, not the augmented copies.
    expected = fit_normalizer(extract_all(train_w, SMALL))
    np.testing.assert_allclose(result.normalizer.mel_mean, expected.mel_mean)
    assert result.normalizer.energy_mean == pytest.approx(expected.energy_mean)

    x1 = np.load(tmp_path / "cache" / "train_x1.npy", mmap_mode="r")
    assert x1.shape[0] == len(train_w) * 3


def test_mixed_precision_training_serves_float32_models(tmp_path):
    import keras

    waves, labels = _tones(2, seed=0)
    config = TrainConfig(
        epochs=1, batch_size=6, augment_copies=0, feature_settings=SMALL, precision="mixed_bfloat16"
    )
    result = train(waves, labels, waves, labels, config, cache_dir=tmp_path)

    # The trained weights come back in float32 models, as a loaded bundle serves them, and the
    # process-wide policy is restored for whatever builds models next.
    assert keras.config.dtype_policy().name == "float32"
    x1, x2 = batch_inputs(extract_all(waves, SMALL), SMALL, result.normalizer)
    for name, x in (("cnn1d", x1), ("cnn2d", x2)):
        model = result.models[name]
        assert model.compute_dtype == "float32"
        assert all(w.dtype == np.float32 for w in model.get_weights())
        assert model.count_params() == {"cnn1d": 587_526, "cnn2d": 1_620_102}[name]
        assert np.isfinite(np.asarray(model(x))).all()


def test_train_rejects_bad_input(tmp_path):
    waves, labels = _tones(1, seed=0)
    with pytest.raises(ValueError, match="label"):
        train(waves, labels[:-1], waves, labels, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="validation"):
        train(waves, labels, [], [], cache_dir=tmp_path)


def test_features_from_elsewhere_must_bring_the_configured_copies(tmp_path):
    features = _features([40, 50, 60])
    labels = ["ANG", "SAD", "NEU"]
    config = TrainConfig(models=("cnn1d",), epochs=1, augment_copies=1, feature_settings=SMALL)
    with pytest.raises(ValueError, match="1 augmented copies, got 0"):
        train_on_features(features, labels, features, labels, config, cache_dir=tmp_path)
    short_copy = [iter(features[:2])]
    with pytest.raises(ValueError, match="copy 0 has 2 clips, not 3"):
        train_on_features(
            features, labels, features, labels, config, copies=short_copy, cache_dir=tmp_path
        )


def test_cache_appends_each_copy_after_the_originals(tmp_path):
    originals, copy = _features([40, 50]), _features([45, 55], seed=1)
    normalizer = fit_normalizer(originals)
    y = np.array([0, 5], np.int32)
    cache = build_cache(originals, y, normalizer, SMALL, tmp_path, copies=[iter(copy)])
    assert list(cache.y) == [0, 5, 0, 5]
    assert list(cache.lengths) == [40, 50, 45, 55]
    wide = FeatureSettings(n_mels=32, mel_frames=cache.width, seq_frames=50)
    np.testing.assert_array_equal(cache.mel[3], input_2d(copy[1], wide, normalizer))


TESS = Path(__file__).resolve().parents[3] / "shared" / "data" / "tess"
TESS_WORDS = {
    "angry": "ANG",
    "disgust": "DIS",
    "fear": "FEA",
    "happy": "HAP",
    "neutral": "NEU",
    "sad": "SAD",
}


@pytest.mark.slow
@pytest.mark.skipif(not TESS.is_dir(), reason="needs the shared TESS clips")
def test_real_training_beats_chance(tmp_path):
    """Both TESS speakers, 40 clips per class, stratified 24/8/8 split; a few epochs on CPU."""
    from ser_worker.audio import load_audio
    from ser_worker.bundle.core import predict_waveforms as predict
    from ser_worker.evaluation.metrics import evaluate

    rng = np.random.default_rng(0)
    split: dict[str, tuple[list, list]] = {"train": ([], []), "val": ([], []), "test": ([], [])}
    for word, code in TESS_WORDS.items():
        files = []
        for speaker in ("OAF", "YAF"):
            folder = next(
                p for p in TESS.iterdir() if p.name.lower() == f"{speaker}_{word}".lower()
            )
            chosen = sorted(folder.glob("*.flac"))
            files += [chosen[i] for i in rng.choice(len(chosen), 20, replace=False)]
        rng.shuffle(files)
        for part, paths in (("test", files[:8]), ("val", files[8:16]), ("train", files[16:])):
            split[part][0].extend(load_audio(p) for p in paths)
            split[part][1].extend([code] * len(paths))

    # A 64-frame mel window keeps the 2D network affordable on two shared cores; patience is
    # long because on 9 steps per epoch validation loss first spikes while BatchNormalization's
    # moving statistics catch up.
    settings = FeatureSettings(mel_frames=64)
    config = TrainConfig(
        epochs=12, early_stopping_patience=12, augment_copies=1, feature_settings=settings
    )
    started = time.perf_counter()
    result = train(*split["train"], *split["val"], config, cache_dir=tmp_path)
    seconds = time.perf_counter() - started

    mel = np.load(tmp_path / "train_mel.npy", mmap_mode="r")
    assert mel.shape[0] == 2 * len(split["train"][0])

    from ser_worker.bundle import create_bundle

    bundle = create_bundle(result.models, feature_settings=settings, normalizer=result.normalizer)
    predictions = predict(bundle, split["test"][0])
    accuracy = {
        name: evaluate(split["test"][1], [p[name].emotion for p in predictions])["accuracy"]
        for name in ("cnn1d", "cnn2d", "ensemble")
    }
    print(f"\nreal training: {seconds:.0f} s, epochs {result.epochs_run}, test accuracy {accuracy}")
    assert accuracy["cnn2d"] >= 0.4
    assert accuracy["ensemble"] >= 0.4
