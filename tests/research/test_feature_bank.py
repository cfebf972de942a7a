"""A feature bank gives back what extraction and augmentation give, within its quantisation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from research import feature_bank
from ser_worker.audio import load_audio
from ser_worker.datasets import load_dataset
from ser_worker.features.augment import augment
from ser_worker.features.study import FeatureSettings, extract
from tests.conftest import TEST_DATA

HALF_STEP_DB = feature_bank.TOP_DB / feature_bank.STEPS / 2


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    clips = load_dataset(TEST_DATA / "ravdess").clips[:3]
    path = tmp_path_factory.mktemp("bank") / "bank.npz"
    feature_bank.build(
        clips, TEST_DATA, path, copies=2, copied=[0, 2], settings=FeatureSettings(), seed=7
    )
    return clips, feature_bank.load(path, TEST_DATA)


def test_quantisation_error_is_at_most_half_a_step():
    mel_db = np.linspace(-80, 0, 1001, dtype=np.float32)[None, :]
    restored = feature_bank.dequantise_mel(feature_bank.quantise_mel(mel_db))
    assert np.max(np.abs(restored - mel_db)) <= HALF_STEP_DB + 1e-4  # float32 rounding


def test_originals_match_extraction(bank):
    clips, stored = bank
    settings = FeatureSettings()
    assert [c.path for c in stored.clips] == [c.path for c in clips]
    for i, clip in enumerate(clips):
        expected = extract(load_audio(clip.path), settings)
        got = stored.original(i, settings)
        np.testing.assert_array_equal(got.zcr, expected.zcr)
        np.testing.assert_array_equal(got.energy, expected.energy)
        assert np.max(np.abs(got.mel_db - expected.mel_db)) <= HALF_STEP_DB + 1e-4


def test_copies_are_the_seeded_augmentations_of_the_copied_clips(bank):
    clips, stored = bank
    settings = FeatureSettings()
    for number in (0, 1):
        for clip_index in (0, 2):
            waveform = load_audio(clips[clip_index].path)
            augmented, _ = augment(waveform, np.random.default_rng((7, number, clip_index)))
            expected = extract(augmented, settings)
            got = stored.copy(number, clip_index, settings)
            np.testing.assert_array_equal(got.zcr, expected.zcr)
            assert np.max(np.abs(got.mel_db - expected.mel_db)) <= HALF_STEP_DB + 1e-4
    with pytest.raises(ValueError, match="no augmented copies of clip 1"):
        stored.copy(0, 1, settings)
    with pytest.raises(ValueError, match="holds 2 copies"):
        stored.copy(2, 0, settings)


def test_reading_applies_the_run_settings_and_refuses_other_framing(bank):
    clips, stored = bank
    normalised = replace(FeatureSettings(), subtract_clip_mean=True, mel_frames=64)
    expected = extract(load_audio(clips[1].path), normalised)
    got = stored.original(1, normalised)
    assert np.max(np.abs(got.mel_db - expected.mel_db)) <= 2 * HALF_STEP_DB
    np.testing.assert_allclose(got.mel_db.mean(axis=1), 0, atol=1e-4)
    with pytest.raises(ValueError, match="hop_length=512"):
        stored.original(0, replace(FeatureSettings(), hop_length=256))
