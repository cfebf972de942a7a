import struct

import librosa
import numpy as np
import pytest

from ser_worker.audio import load_audio
from ser_worker.labels import EMOTIONS, SAMPLE_RATE
from ser_worker.models.encoder import (
    BACKENDS,
    HOP,
    LAYERS,
    WINDOW_FRAMES,
    EncoderUnavailable,
    LinearHead,
    check_layers,
    embedding_size,
    encoder_windows,
    fit_linear_head,
    load_encoder,
    pool,
    weights,
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
    monkeypatch.setattr(weights, "MODEL_SHA256", "0" * 64)
    with pytest.raises(EncoderUnavailable, match="not the pinned"):
        weights.verified_weight_parts()


def test_missing_weight_packages_say_how_to_install_them(monkeypatch):
    monkeypatch.setattr(weights, "WEIGHT_PARTS", (("ser_no_such_package", "x"),))
    with pytest.raises(EncoderUnavailable, match="reinstall ser"):
        weights.verified_weight_parts()


@pytest.mark.parametrize("backend", BACKENDS)
def test_real_clips_embed_the_same_alone_or_in_a_batch(real_clips, backend):
    encoder = load_encoder(LAYERS, 1, backend)
    waveforms = [load_audio(path) for path in real_clips[:3]]
    together = encoder.embed(waveforms)
    assert together.shape == (3, embedding_size(LAYERS))
    assert np.isfinite(together).all()
    alone = encoder.embed(waveforms[1:2])
    assert np.allclose(alone[0], together[1], atol=1e-3)
    # Different speech gives different vectors (a constant output would pass the rest).
    assert not np.allclose(together[0], together[2], atol=1e-2)


def test_a_cut_model_file_keeps_everything_but_the_blocks_never_run():
    parts = weights.verified_weight_parts()
    with weights._open_weights(parts) as whole:
        full = [what for what, _ in weights._model_records(whole)]
    cut_stream = weights.model_files(parts, 3)["model.bin"]
    cut_records = dict(weights._model_records(cut_stream))
    cut = list(cut_records)
    never_run = [f"variable encoder/layer_{block}/" for block in (3, 4, 5)] + [
        f"variable decoder/layer_{block}/" for block in (1, 2, 3, 4, 5)
    ]
    assert cut == [what for what in full if not what.startswith(tuple(never_run))]
    assert "variable encoder/layer_2/ffn/linear_0/weight" in cut
    assert "variable decoder/layer_0/ffn/linear_0/weight" in cut
    # The decoder's embedding keeps one of its rows: (rank, rows, width) after its name.
    embedding = cut_records["variable decoder/embeddings/weight"]
    name_size = struct.unpack_from("<H", embedding)[0]
    assert struct.unpack_from("<B2I", embedding, 2 + name_size) == (2, 1, 512)
    per_block = sum(w.startswith("variable encoder/layer_0/") for w in full)
    assert len(full) - len(cut) == 3 * per_block + 5 * sum(
        w.startswith("variable decoder/layer_0/") for w in full
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_pooled_block_is_its_own_encoders_vector(real_clips, backend):
    waveforms = [load_audio(path) for path in real_clips[:2]]
    both = load_encoder((3, 6), 1, backend).embed(waveforms)
    last = load_encoder((6,), 1, backend).embed(waveforms)
    assert both.shape == (2, embedding_size((3, 6)))
    np.testing.assert_allclose(both[:, embedding_size((3,)) :], last, atol=1e-5)
    # Block 3's half is not block 6's again: the cut model stops earlier.
    assert not np.allclose(both[:, : embedding_size((3,))], last, atol=1e-2)


@pytest.mark.parametrize("layers", [(), (3, 3), (6, 3), (0, 6), (7,)])
def test_layers_must_be_distinct_ascending_blocks(layers):
    with pytest.raises(ValueError, match="ascending"):
        check_layers(layers)


def test_first_rows_cuts_a_variable_record_and_keeps_its_type():
    matrix = np.arange(12, dtype=np.float16).reshape(4, 3)
    name = b"decoder/embeddings/weight\0"
    record = (
        struct.pack("<H", len(name))
        + name
        + bytes([2])
        + struct.pack("<2I", 4, 3)
        + bytes([5])
        + struct.pack("<I", matrix.nbytes)
        + matrix.tobytes()
    )
    cut = weights._first_rows(record, 1)
    assert cut == (
        struct.pack("<H", len(name))
        + name
        + bytes([2])
        + struct.pack("<2I", 1, 3)
        + bytes([5])
        + struct.pack("<I", 6)
        + matrix[:1].tobytes()
    )
