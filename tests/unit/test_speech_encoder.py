import librosa
import numpy as np
import pytest

from ser_worker import speech_encoder
from ser_worker.audio import load_audio
from ser_worker.labels import EMOTIONS
from ser_worker.speech_encoder import (
    EMBEDDING_SIZE,
    HOP,
    SAMPLE_RATE,
    WINDOW_FRAMES,
    EncoderUnavailable,
    LinearHead,
    encoder_windows,
    fit_linear_head,
    load_encoder,
    pool,
    whisper_log_mel,
)


def tone(frequency: float, seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def test_log_mel_has_one_frame_per_hop_and_whispers_8_decade_floor():
    features = whisper_log_mel(tone(1000, 1.0))
    assert features.shape == (80, SAMPLE_RATE // HOP)
    # Whisper clamps at 8 decades below the peak, then divides by 4.
    assert features.max() - features.min() == pytest.approx(2.0, abs=1e-5)


def test_log_mel_peaks_in_the_band_of_the_tone():
    centres = librosa.mel_frequencies(n_mels=82, fmax=SAMPLE_RATE / 2)[1:-1]
    for frequency in (300, 1000, 3000):
        peak_band = whisper_log_mel(tone(frequency, 0.5)).mean(axis=1).argmax()
        assert abs(centres[peak_band] - frequency) <= np.diff(centres)[peak_band - 1]


def test_windows_cover_the_clip_and_count_its_frames():
    window_seconds = WINDOW_FRAMES * HOP / SAMPLE_RATE
    short = encoder_windows(tone(200, 2.0))
    assert [valid for _, valid in short] == [200]
    long = encoder_windows(tone(200, 2 * window_seconds + 1.0))
    assert [valid for _, valid in long] == [WINDOW_FRAMES, WINDOW_FRAMES, 100]
    for features, _ in long:
        assert features.shape == (80, WINDOW_FRAMES)
    # Past the clip, the window holds the floor of silence, as Whisper's own padding does.
    features, valid = short[0]
    assert np.allclose(features[:, valid + 2 :], features.min())


def test_pool_is_mean_then_standard_deviation_over_time():
    frames = np.array([[1.0, 2.0], [3.0, 6.0]])
    assert pool(frames).tolist() == [2.0, 4.0, 1.0, 2.0]


def separable(n_per_class: int = 20, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = np.eye(len(EMOTIONS), 8) * 10
    x = np.concatenate([c + rng.normal(size=(n_per_class, 8)) for c in centres])
    return x.astype(np.float32), [code for code in EMOTIONS for _ in range(n_per_class)]


def test_linear_head_learns_and_matches_scikit_learn():
    from sklearn.linear_model import LogisticRegression

    x, y = separable()
    head = fit_linear_head(x, y, EMOTIONS)
    p = head.probabilities(x)
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert [EMOTIONS[i] for i in p.argmax(axis=1)] == y
    reference = LogisticRegression(C=0.1, max_iter=3000, class_weight="balanced")
    reference.fit((x - x.mean(axis=0)) / x.std(axis=0), [EMOTIONS.index(code) for code in y])
    expected = reference.predict_proba((x - x.mean(axis=0)) / x.std(axis=0))
    assert np.allclose(p, expected, atol=1e-4)

    loaded = LinearHead.from_bytes(head.to_bytes())
    assert loaded.labels == EMOTIONS
    assert np.array_equal(loaded.probabilities(x), p)


def test_linear_head_needs_every_class():
    x, y = separable()
    with pytest.raises(ValueError, match="every class"):
        fit_linear_head(x[: 20 * 5], y[: 20 * 5], EMOTIONS)


def test_weights_that_are_not_the_pinned_ones_are_refused(monkeypatch):
    monkeypatch.setattr(speech_encoder, "MODEL_SHA256", "0" * 64)
    with pytest.raises(EncoderUnavailable, match="not the pinned"):
        speech_encoder.model_files()


def test_missing_weight_packages_say_how_to_install_them(monkeypatch):
    monkeypatch.setattr(speech_encoder, "WEIGHT_PARTS", (("ser_no_such_package", "x"),))
    with pytest.raises(EncoderUnavailable, match="reinstall ser"):
        speech_encoder.model_files()


def test_real_clips_embed_the_same_alone_or_in_a_batch(real_clips):
    encoder = load_encoder(threads=1)
    waveforms = [load_audio(path) for path in real_clips[:3]]
    together = encoder.embed(waveforms)
    assert together.shape == (3, EMBEDDING_SIZE)
    assert np.isfinite(together).all()
    alone = encoder.embed(waveforms[1:2])
    assert np.allclose(alone[0], together[1], atol=1e-3)
    # Different speech gives different vectors (a constant output would pass the rest).
    assert not np.allclose(together[0], together[2], atol=1e-2)
