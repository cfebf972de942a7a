"""Level invariance, recording channels and calibration (issue #14): the pure functions."""

import numpy as np
import pytest
import soundfile as sf

from ser_worker.bundle.manifest import (
    CURRENT_PREPROCESSING,
    BundleError,
    Calibration,
    Manifest,
    Preprocessing,
)
from ser_worker.bundle.preprocess import prepare_clip
from ser_worker.evaluation.calibration import (
    expected_calibration_error,
    fit_temperature,
    temperature_scaled,
)
from ser_worker.features import channel
from ser_worker.labels import EMOTIONS, SAMPLE_RATE, TARGET_LUFS
from ser_worker.loudness import integrated_loudness, normalise_loudness


@pytest.fixture(scope="module")
def voice(real_clips) -> np.ndarray:
    y, rate = sf.read(real_clips[0], dtype="float32")
    assert rate == SAMPLE_RATE
    return y


@pytest.mark.parametrize("db", [-30.0, -20.0, 0.0, 10.0])
def test_loudness_normalisation_removes_any_gain(voice, db):
    reference = normalise_loudness(voice, SAMPLE_RATE, TARGET_LUFS)
    scaled = normalise_loudness(channel.gain(voice, db), SAMPLE_RATE, TARGET_LUFS)
    assert np.max(np.abs(scaled - reference)) < 1e-5 * np.max(np.abs(reference))
    assert integrated_loudness(reference, SAMPLE_RATE) == pytest.approx(TARGET_LUFS, abs=0.01)


def test_loudness_of_a_clip_shorter_than_a_gating_block(voice):
    short = voice[len(voice) // 2 : len(voice) // 2 + 4000]  # 0.25 s
    out = normalise_loudness(short, SAMPLE_RATE, TARGET_LUFS)
    assert integrated_loudness(out, SAMPLE_RATE) == pytest.approx(TARGET_LUFS, abs=0.01)


def test_digital_silence_is_left_alone():
    assert not np.any(normalise_loudness(np.zeros(8000, np.float32), SAMPLE_RATE, TARGET_LUFS))


def test_new_bundles_read_every_clip_at_one_loudness_and_old_ones_as_decoded(voice):
    loud, quiet = voice, channel.gain(voice, -25.0)
    new = [prepare_clip(y, SAMPLE_RATE, CURRENT_PREPROCESSING) for y in (loud, quiet)]
    for member in ("cnn", "encoder"):
        a, b = getattr(new[0], member), getattr(new[1], member)
        assert a.shape == b.shape and np.allclose(a, b, atol=1e-6)
    old = [prepare_clip(y, SAMPLE_RATE, Preprocessing()) for y in (loud, quiet)]
    assert np.allclose(old[1].encoder, old[0].encoder * 10 ** (-25 / 20), atol=1e-6)


def test_manifests_without_loudness_or_calibration_keep_their_old_meaning():
    assert Preprocessing().loudness is None
    assert Preprocessing.model_validate({"cnn": {"trim": True}}).loudness is None
    assert CURRENT_PREPROCESSING.loudness.target_lufs == TARGET_LUFS
    minimal = {
        "format": "ser-bundle/1",
        "version": "v",
        "labels": list(EMOTIONS),
        "models": {"cnn1d": {"input_shape": [800, 1], "weights": "cnn1d.weights.h5"}},
        "feature_settings": {},
        "normalizer": {},
    }
    manifest = Manifest.model_validate(minimal)
    assert manifest.member_calibration == Calibration(temperature=1.0, uncertain_below=0.5)
    recorded = Manifest.model_validate(minimal | {"calibration": {"temperature": 1.7}})
    assert recorded.member_calibration.temperature == 1.7
    assert recorded.to_dict()["calibration"] == {"temperature": 1.7}
    with pytest.raises(BundleError, match="temperature"):
        Manifest.model_validate(minimal | {"calibration": {"temperature": 0}})
    with pytest.raises(BundleError, match="loudness method"):
        Manifest.model_validate(minimal | {"preprocessing": {"loudness": {"method": "peak"}}})


def _power(x: np.ndarray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


@pytest.mark.parametrize("snr", [5.0, 15.0, 30.0])
@pytest.mark.parametrize("colour", channel.NOISE_COLOURS)
def test_noise_is_added_at_the_asked_signal_to_noise_ratio(voice, snr, colour):
    noisy = channel.add_noise(voice, snr, np.random.default_rng(0), colour)
    measured = 10 * np.log10(_power(voice) / _power(noisy - voice))
    assert measured == pytest.approx(snr, abs=0.01)


def test_coloured_noise_tilts_its_spectrum():
    rng = np.random.default_rng(1)
    low_share = {}
    for colour in channel.NOISE_COLOURS:
        spectrum = np.abs(np.fft.rfft(channel.coloured_noise(32_000, colour, rng))) ** 2
        low_share[colour] = spectrum[: len(spectrum) // 8].sum() / spectrum.sum()
    assert low_share["white"] < low_share["pink"] < low_share["brown"]


def test_a_telephone_drops_what_lies_above_its_band(voice):
    call = channel.telephone(voice)
    assert call.shape == voice.shape and call.dtype == np.float32

    def above_4k(x):
        spectrum = np.abs(np.fft.rfft(x)) ** 2
        return spectrum[int(len(spectrum) * 4000 / 8000) :].sum() / spectrum.sum()

    assert above_4k(call) < 0.01 * max(above_4k(voice), 1e-6) + 1e-4
    assert np.corrcoef(channel.band_limited(voice, 300, 3400), call)[0, 1] > 0.9


@pytest.mark.parametrize(("codec", "kbps"), [("mp3", 32), ("mp3", 64), ("opus", 16)])
def test_lossy_codecs_keep_the_clip_in_place(voice, codec, kbps):
    decoded = channel.lossy(voice, codec, kbps)
    assert decoded.shape == voice.shape
    assert np.corrcoef(decoded, voice)[0, 1] > 0.95
    assert not np.array_equal(decoded, voice)


def test_a_room_adds_a_tail_below_the_direct_path(voice):
    impulse = channel.room_impulse(0.5, np.random.default_rng(0))
    tail = np.sum(impulse[1:] ** 2) / impulse[0] ** 2
    assert 10 * np.log10(1 / tail) == pytest.approx(channel.DIRECT_TO_REVERBERANT_DB, abs=0.01)
    wet = channel.reverberant(voice, 0.5, np.random.default_rng(0))
    assert wet.shape == voice.shape and 0.5 < np.corrcoef(wet, voice)[0, 1] < 0.99


def test_a_guarded_gain_never_clips(voice):
    louder = channel.gain_with_guard(voice, 40.0)
    assert np.max(np.abs(louder)) == pytest.approx(1.0)
    assert np.max(np.abs(channel.gain_with_guard(voice, -6.0))) < np.max(np.abs(voice))


def test_channel_copies_are_seeded_and_keep_every_clip(voice):
    clips = [voice, voice[::-1].copy(), voice[: len(voice) // 2].copy()]
    first = channel.channel_copies(clips, ["a", "a", "b"], 2, seed=3)
    again = channel.channel_copies(clips, ["a", "a", "b"], 2, seed=3)
    other = channel.channel_copies(clips, ["a", "a", "b"], 2, seed=4)
    assert len(first) == 2 and all(len(copy) == 3 for copy in first)
    for copy, same in zip(first, again, strict=True):
        for y, x, original in zip(copy, same, clips, strict=True):
            assert np.array_equal(y, x) and y.shape == original.shape
            assert np.isfinite(y).all() and np.max(np.abs(y)) <= 1.0 + 1e-6
    assert any(not np.array_equal(a, b) for a, b in zip(first[0], other[0], strict=True))


def test_temperature_scaling():
    p = np.array([[0.7, 0.1, 0.05, 0.05, 0.05, 0.05], [0.2, 0.3, 0.1, 0.1, 0.2, 0.1]])
    assert np.allclose(temperature_scaled(p, 1.0), p)
    softer = temperature_scaled(p, 2.0)
    assert np.allclose(softer.sum(axis=1), 1.0)
    assert np.array_equal(softer.argmax(axis=1), p.argmax(axis=1))
    assert (softer.max(axis=1) < p.max(axis=1)).all()


def test_an_overconfident_model_gets_a_temperature_above_one_and_a_lower_error():
    rng = np.random.default_rng(0)
    n = 3000
    truth = rng.integers(0, 6, n)
    # Right 60% of the time, but always 95% sure.
    predicted = np.where(rng.uniform(size=n) < 0.6, truth, (truth + rng.integers(1, 6, n)) % 6)
    p = np.full((n, 6), 0.01)
    p[np.arange(n), predicted] = 0.95
    labels = [EMOTIONS[i] for i in truth]
    temperature = fit_temperature(labels, p)
    assert temperature > 1.5
    before = expected_calibration_error(labels, p)
    after = expected_calibration_error(labels, temperature_scaled(p, temperature))
    assert before == pytest.approx(0.35, abs=0.03)
    assert after < 0.05


def test_a_calibrated_model_has_no_calibration_error():
    # Every clip at confidence 0.5, right for exactly half of them.
    p = np.full((600, 6), 0.1)
    p[:, 0] = 0.5
    labels = ["ANG", "DIS"] * 300
    assert expected_calibration_error(labels, p) == pytest.approx(0.0, abs=1e-12)
