from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ser_worker.audio import load_audio
from ser_worker.features.study import (
    ClipFeatures,
    FeatureSettings,
    Normalizer,
    batch_inputs,
    extract,
    fit_normalizer,
    frame_energy,
    input_1d,
    input_2d,
    log_mel,
    zero_crossing_rate,
)
from ser_worker.labels import CNN1D, CNN2D, MODEL_NAMES
from ser_worker.models.registry import CNN_MEMBERS, input_shape

S = FeatureSettings()


def noise(n: int, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


def synthetic_features(n_frames: int, seed: int, n_mels: int = S.n_mels) -> ClipFeatures:
    rng = np.random.default_rng(seed)
    return ClipFeatures(
        zcr=rng.uniform(0, 0.5, n_frames).astype(np.float32),
        energy=rng.exponential(0.01, n_frames).astype(np.float32),
        mel_db=rng.uniform(-80, 0, (n_mels, n_frames)).astype(np.float32)
        + np.linspace(0, 30, n_mels, dtype=np.float32)[:, None],
    )


# --- settings -------------------------------------------------------------------------------


def test_settings_defaults_and_round_trip() -> None:
    assert (S.sample_rate, S.frame_length, S.hop_length, S.n_mels) == (16_000, 2048, 512, 128)
    assert S.seq_frames == 400 and S.input_length_1d == 800
    assert S.mel_frames % 16 == 0
    restored = FeatureSettings.from_dict(json.loads(json.dumps(S.to_dict())))
    assert restored == S


def test_settings_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        FeatureSettings(mel_frames=100)
    with pytest.raises(ValueError, match="positive"):
        FeatureSettings(hop_length=0)
    with pytest.raises(TypeError):
        FeatureSettings.from_dict({**S.to_dict(), "unknown": 1})
    with pytest.raises(ValueError, match="bool"):
        FeatureSettings(subtract_clip_mean=1)


def test_settings_of_bundles_made_before_per_clip_normalisation_load_without_it() -> None:
    older = {k: v for k, v in S.to_dict().items() if k != "subtract_clip_mean"}
    assert FeatureSettings.from_dict(older).subtract_clip_mean is False


def test_per_clip_normalisation_centres_each_band_and_leaves_the_rest(
    real_clips: list[Path],
) -> None:
    y = load_audio(real_clips[0])
    plain = extract(y, S)
    centred = extract(y, FeatureSettings(subtract_clip_mean=True))
    np.testing.assert_allclose(centred.mel_db.mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(
        centred.mel_db, plain.mel_db - plain.mel_db.mean(axis=1, keepdims=True), atol=1e-4
    )
    np.testing.assert_array_equal(centred.zcr, plain.zcr)
    np.testing.assert_array_equal(centred.energy, plain.energy)


# --- per-frame features ---------------------------------------------------------------------


@pytest.mark.parametrize("n_samples", [4_000, 4_096, 16_000, 16_001, 48_000])
def test_frame_counts_agree(n_samples: int) -> None:
    f = extract(noise(n_samples), S)
    expected = 1 + n_samples // S.hop_length
    assert f.zcr.shape == (expected,)
    assert f.energy.shape == (expected,)
    assert f.mel_db.shape == (S.n_mels, expected)
    assert f.n_frames == expected
    assert {f.zcr.dtype, f.energy.dtype, f.mel_db.dtype} == {np.dtype(np.float32)}


def test_energy_matches_a_per_frame_loop() -> None:
    y = noise(5_000, seed=3)
    padded = np.pad(y.astype(np.float64), S.frame_length // 2)
    reference = [
        np.sum(padded[start : start + S.frame_length] ** 2) / S.frame_length
        for start in range(0, padded.shape[0] - S.frame_length + 1, S.hop_length)
    ]
    np.testing.assert_allclose(frame_energy(y, S), reference, rtol=1e-6)


def test_energy_of_a_constant_signal() -> None:
    energy = frame_energy(np.full(16_000, 0.5, np.float32), S)
    # Interior frames are all signal; the first frame is half padding.
    np.testing.assert_allclose(energy[2:-2], 0.25, rtol=1e-6)
    assert energy[0] == pytest.approx(0.125, rel=1e-3)


def test_zcr_of_a_sine() -> None:
    t = np.arange(16_000) / 16_000
    zcr = zero_crossing_rate(np.sin(2 * np.pi * 500 * t + 0.1).astype(np.float32), S)
    # 500 Hz crosses zero 1000 times a second: 1000 / 16000 per sample.
    np.testing.assert_allclose(zcr[2:-2], 1000 / 16_000, rtol=0.02)


def test_log_mel_is_relative_to_the_loudest_bin() -> None:
    mel_db = log_mel(noise(16_000), S)
    assert mel_db.shape == (S.n_mels, 32)
    assert mel_db.max() == pytest.approx(0.0)
    assert mel_db.min() >= -80.0 - 1e-3


def test_extract_is_deterministic_on_real_clips(real_clips: list[Path]) -> None:
    y = load_audio(real_clips[0])
    a, b = extract(y, S), extract(y.copy(), S)
    for name in ("zcr", "energy", "mel_db"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert np.all(np.isfinite(a.mel_db)) and np.all(a.energy >= 0)


def test_extract_rejects_non_mono() -> None:
    with pytest.raises(ValueError):
        extract(np.zeros((100, 2), np.float32), S)
    with pytest.raises(ValueError):
        extract(np.zeros(0, np.float32), S)


# --- normalizer -----------------------------------------------------------------------------


def test_normalizer_standardises_its_training_set() -> None:
    train = [synthetic_features(n, seed) for seed, n in enumerate([30, 75, 140, 52])]
    norm = fit_normalizer(train)

    zcr = np.concatenate([(f.zcr - norm.zcr_mean) / norm.zcr_std for f in train])
    energy = np.concatenate([(f.energy - norm.energy_mean) / norm.energy_std for f in train])
    mel = np.concatenate(
        [(f.mel_db - norm.mel_mean[:, None]) / norm.mel_std[:, None] for f in train], axis=1
    )
    for values in (zcr, energy):
        assert values.mean() == pytest.approx(0, abs=1e-5)
        assert values.std() == pytest.approx(1, abs=1e-4)
    np.testing.assert_allclose(mel.mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(mel.std(axis=1), 1, atol=1e-4)
    assert norm.mel_mean.shape == (S.n_mels,) and norm.mel_mean.dtype == np.float32


def test_normalizer_weights_frames_not_clips() -> None:
    short = ClipFeatures(np.zeros(1, np.float32), np.zeros(1, np.float32), np.zeros((2, 1)))
    long = ClipFeatures(np.ones(9, np.float32), np.ones(9, np.float32), np.ones((2, 9)))
    norm = fit_normalizer([short, long])
    assert norm.zcr_mean == pytest.approx(0.9)
    np.testing.assert_allclose(norm.mel_mean, 0.9)


def test_normalizer_survives_a_constant_feature() -> None:
    flat = ClipFeatures(
        np.full(10, 0.2, np.float32), np.zeros(10, np.float32), np.full((4, 10), -80, np.float32)
    )
    norm = fit_normalizer([flat])
    assert norm.zcr_std == 1.0 and norm.energy_std == 1.0
    np.testing.assert_array_equal(norm.mel_std, 1.0)


def test_normalizer_round_trip_through_json() -> None:
    norm = fit_normalizer([synthetic_features(50, 1), synthetic_features(20, 2)])
    restored = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert restored.zcr_mean == norm.zcr_mean and restored.energy_std == norm.energy_std
    np.testing.assert_array_equal(restored.mel_mean, norm.mel_mean)
    np.testing.assert_array_equal(restored.mel_std, norm.mel_std)


def test_fit_on_nothing_fails() -> None:
    with pytest.raises(ValueError):
        fit_normalizer([])


# --- model inputs ---------------------------------------------------------------------------


@pytest.fixture
def norm() -> Normalizer:
    return fit_normalizer([synthetic_features(n, seed) for seed, n in enumerate([60, 90, 200])])


def test_input_1d_pads_after_standardising(norm: Normalizer) -> None:
    f = synthetic_features(50, seed=7)
    x = input_1d(f, S, norm)
    assert x.shape == (800, 1) and x.dtype == np.float32
    zcr, energy = x[:400, 0], x[400:, 0]
    np.testing.assert_allclose(zcr[:50], (f.zcr - norm.zcr_mean) / norm.zcr_std, rtol=1e-6)
    np.testing.assert_allclose(
        energy[:50], (f.energy - norm.energy_mean) / norm.energy_std, rtol=1e-6
    )
    assert not zcr[50:].any() and not energy[50:].any()


def test_input_1d_crops_long_clips_to_their_start(norm: Normalizer) -> None:
    f = synthetic_features(450, seed=8)
    x = input_1d(f, S, norm)[:, 0]
    np.testing.assert_allclose(x[:400], (f.zcr[:400] - norm.zcr_mean) / norm.zcr_std, rtol=1e-6)
    np.testing.assert_allclose(
        x[400:], (f.energy[:400] - norm.energy_mean) / norm.energy_std, rtol=1e-6
    )


def standardised_mel(f: ClipFeatures, norm: Normalizer) -> np.ndarray:
    return (f.mel_db - norm.mel_mean[:, None]) / norm.mel_std[:, None]


def test_input_2d_pads_short_clips_around_the_centre(norm: Normalizer) -> None:
    t = S.mel_frames
    f = synthetic_features(t - 31, seed=9)
    x = input_2d(f, S, norm)
    assert x.shape == (128, t, 1) and x.dtype == np.float32
    left = 31 // 2
    np.testing.assert_allclose(x[:, left : left + t - 31, 0], standardised_mel(f, norm), rtol=1e-5)
    assert not x[:, :left].any() and not x[:, left + t - 31 :].any()


def test_input_2d_crops_long_clips(norm: Normalizer) -> None:
    t = S.mel_frames
    f = synthetic_features(t + 40, seed=10)
    full = standardised_mel(f, norm)
    np.testing.assert_allclose(input_2d(f, S, norm)[:, :, 0], full[:, 20 : 20 + t], rtol=1e-5)
    np.testing.assert_allclose(input_2d(f, S, norm, 0)[:, :, 0], full[:, :t], rtol=1e-5)
    np.testing.assert_allclose(input_2d(f, S, norm, 40)[:, :, 0], full[:, 40:], rtol=1e-5)
    with pytest.raises(ValueError, match="offset 41"):
        input_2d(f, S, norm, 41)
    with pytest.raises(ValueError):
        input_2d(f, S, norm, -1)


def test_input_2d_exact_length_is_untouched(norm: Normalizer) -> None:
    f = synthetic_features(S.mel_frames, seed=11)
    np.testing.assert_allclose(input_2d(f, S, norm)[:, :, 0], standardised_mel(f, norm), rtol=1e-5)


def test_input_2d_rejects_mismatched_bands(norm: Normalizer) -> None:
    with pytest.raises(ValueError, match="mel bands"):
        input_2d(synthetic_features(50, seed=12, n_mels=64), S, norm)


def test_batch_inputs_stack_the_single_inputs(norm: Normalizer) -> None:
    clips = [synthetic_features(n, seed) for seed, n in enumerate([20, S.mel_frames, 500])]
    x1, x2 = batch_inputs(clips, S, norm)
    assert x1.shape == (3, 800, 1) and x2.shape == (3, 128, S.mel_frames, 1)
    assert x1.dtype == x2.dtype == np.float32
    for i, f in enumerate(clips):
        np.testing.assert_array_equal(x1[i], input_1d(f, S, norm))
        np.testing.assert_array_equal(x2[i], input_2d(f, S, norm))
    e1, e2 = batch_inputs([], S, norm)
    assert e1.shape == (0, 800, 1) and e2.shape == (0, 128, S.mel_frames, 1)


def test_registry_members_are_the_model_names_and_stack_their_inputs(norm: Normalizer) -> None:
    settings = FeatureSettings(mel_frames=48, seq_frames=100)
    assert tuple(CNN_MEMBERS) == MODEL_NAMES
    assert input_shape(CNN1D, settings) == (200, 1)
    assert input_shape(CNN2D, settings) == (128, 48, 1)
    with pytest.raises(ValueError, match="unknown model"):
        input_shape("rnn", settings)
    clips = [synthetic_features(n, seed) for seed, n in enumerate([20, S.mel_frames, 500])]
    x1, x2 = batch_inputs(clips, S, norm)
    np.testing.assert_array_equal(CNN_MEMBERS[CNN1D].inputs(clips, S, norm), x1)
    np.testing.assert_array_equal(CNN_MEMBERS[CNN2D].inputs(clips, S, norm), x2)
    for name, spec in CNN_MEMBERS.items():
        assert spec.name == name
        assert spec.inputs(clips, S, norm).shape[1:] == spec.input_shape(S)


def test_registry_imports_no_model_library() -> None:
    code = "import sys, ser_worker.models.registry; print('keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_real_clips_end_to_end(real_clips: list[Path]) -> None:
    features = [extract(load_audio(path), S) for path in real_clips]
    norm = fit_normalizer(features)
    x1, x2 = batch_inputs(features, S, norm)
    assert x1.shape == (12, 800, 1) and x2.shape == (12, 128, S.mel_frames, 1)
    assert np.all(np.isfinite(x1)) and np.all(np.isfinite(x2))
