from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ser_worker import audio
from ser_worker.audio import (
    SAMPLE_RATE,
    AudioError,
    AudioLimits,
    EmptyAudioError,
    FileTooLargeError,
    NonFiniteAudioError,
    NoSpeechError,
    NotAudioError,
    SilentAudioError,
    TooLongError,
    TooShortError,
    TruncatedAudioError,
    load_audio,
    probe,
)

VOICED_S, MARGIN_S = 1.5, 0.3
TOTAL_S = VOICED_S + 2 * MARGIN_S


def encode(y: np.ndarray, sample_rate: int, fmt: str = "WAV", subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, y, sample_rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- the error taxonomy ---------------------------------------------------------------------


def test_error_codes_are_stable_and_distinct() -> None:
    codes = {
        EmptyAudioError: "empty",
        NotAudioError: "not_audio",
        TruncatedAudioError: "truncated",
        NonFiniteAudioError: "non_finite",
        SilentAudioError: "silent",
        NoSpeechError: "no_speech",
        TooShortError: "too_short",
        TooLongError: "too_long",
        FileTooLargeError: "too_large",
    }
    for cls, code in codes.items():
        assert cls.code == code
        assert issubclass(cls, AudioError) and issubclass(cls, ValueError)


# --- unusable inputs, each mapped to its exact error ----------------------------------------


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(EmptyAudioError):
        load_audio(write(tmp_path / "empty.wav", b""))
    with pytest.raises(EmptyAudioError):
        load_audio(b"")


def test_random_bytes_named_wav(tmp_path: Path) -> None:
    junk = np.random.default_rng(0).bytes(20_000)
    with pytest.raises(NotAudioError) as excinfo:
        load_audio(write(tmp_path / "noise.wav", junk))
    assert excinfo.type is NotAudioError
    assert "BytesIO" not in str(excinfo.value)


def test_text_file(tmp_path: Path) -> None:
    text = "emotion,path\nANG,clip.wav\n" * 200
    with pytest.raises(NotAudioError):
        load_audio(write(tmp_path / "labels.wav", text.encode()))


def test_wav_with_truncated_header(make_speech) -> None:
    data = encode(make_speech(), SAMPLE_RATE)
    with pytest.raises(TruncatedAudioError, match="header is cut off") as excinfo:
        load_audio(data[:20])  # cut inside the fmt chunk
    assert excinfo.type is TruncatedAudioError


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "FLOAT"])
def test_wav_with_truncated_data(make_speech, subtype: str) -> None:
    data = encode(make_speech(), SAMPLE_RATE, subtype=subtype)
    with pytest.raises(TruncatedAudioError, match="truncated") as excinfo:
        load_audio(data[: len(data) // 2])
    assert excinfo.type is TruncatedAudioError


def test_wav_cut_right_after_header_is_truncated(make_speech) -> None:
    data = encode(make_speech(), SAMPLE_RATE)
    with pytest.raises(TruncatedAudioError):
        load_audio(data[:44])  # full header, no samples


def test_flac_with_truncated_data(make_speech) -> None:
    data = encode(make_speech(), SAMPLE_RATE, fmt="FLAC")
    with pytest.raises(TruncatedAudioError):
        load_audio(data[: len(data) // 2])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_wav_with_non_finite_samples(tmp_path: Path, make_speech, bad: float) -> None:
    y = make_speech()
    y[len(y) // 2] = bad
    path = write(tmp_path / "bad.wav", encode(y, SAMPLE_RATE, subtype="FLOAT"))
    with pytest.raises(NonFiniteAudioError, match="1 NaN or infinite"):
        load_audio(path)


def test_digital_silence(tmp_path: Path) -> None:
    path = write(tmp_path / "zeros.wav", encode(np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE))
    with pytest.raises(SilentAudioError):
        load_audio(path)


def test_near_silence_below_threshold() -> None:
    hiss = np.random.default_rng(1).uniform(-5e-5, 5e-5, SAMPLE_RATE).astype(np.float32)
    with pytest.raises(SilentAudioError):
        load_audio(encode(hiss, SAMPLE_RATE, subtype="FLOAT"))


def test_ten_millisecond_clip(make_speech) -> None:
    y = make_speech(voiced_s=0.01, margin_s=0.0)
    with pytest.raises(
        TooShortError, match=r"0\.01 s after trimming silence; the minimum is 0\.25"
    ):
        load_audio(encode(y, SAMPLE_RATE))
    with pytest.raises(TooShortError):
        load_audio(encode(y, SAMPLE_RATE), trim=False)


def test_short_speech_inside_long_silence_is_too_short(make_speech) -> None:
    # 2 s of file, but only 0.05 s of it is sound: the minimum applies after trimming.
    y = make_speech(voiced_s=0.05, margin_s=0.975)
    with pytest.raises(TooShortError):
        load_audio(encode(y, SAMPLE_RATE))
    assert load_audio(encode(y, SAMPLE_RATE), trim=False).shape[0] == y.shape[0]


def test_too_long_is_decided_from_the_header(tmp_path: Path, monkeypatch) -> None:
    two_minutes = np.full(120 * SAMPLE_RATE, 0.1, dtype=np.float32)
    path = write(tmp_path / "long.wav", encode(two_minutes, SAMPLE_RATE))

    def no_decoding(*args, **kwargs):
        raise AssertionError("samples were decoded")

    monkeypatch.setattr(sf.SoundFile, "read", no_decoding)
    with pytest.raises(TooLongError, match=r"120\.0 s long; the maximum is 60 s"):
        load_audio(path, replace(AudioLimits.from_settings(), max_duration_s=60.0))


def test_too_large_is_checked_before_anything_else(tmp_path: Path, make_speech) -> None:
    limits = replace(AudioLimits.from_settings(), max_bytes=1_000)
    valid = encode(make_speech(), SAMPLE_RATE)
    junk = np.random.default_rng(2).bytes(5_000)
    with pytest.raises(FileTooLargeError, match="1,000"):
        load_audio(write(tmp_path / "big.wav", valid), limits)
    with pytest.raises(FileTooLargeError):
        load_audio(junk, limits)


@pytest.mark.parametrize(
    "data",
    [
        b"\x00",
        b"RIFF",
        b"RIFF\x24\x00\x00\x00WAVEfmt ",
        b"fLaC" + bytes(100),
        b"OggS" + bytes(200),
        b"ID3" + bytes(500),
        b"\xff\xfb\x90\x00" * 300,
    ],
)
def test_garbage_never_escapes_as_a_raw_error(data: bytes) -> None:
    with pytest.raises(AudioError):
        load_audio(data)


def test_missing_path_is_not_an_audio_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_audio(tmp_path / "absent.wav")


# --- formats that must load -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "subtype", "sample_rate", "channels"),
    [
        ("WAV", "PCM_U8", 16_000, 1),
        ("WAV", "PCM_16", 16_000, 1),
        ("WAV", "PCM_24", 16_000, 1),
        ("WAV", "FLOAT", 16_000, 1),
        ("WAV", "PCM_16", 16_000, 2),
        ("WAV", "PCM_16", 8_000, 1),
        ("WAV", "PCM_16", 96_000, 1),
        ("FLAC", "PCM_16", 44_100, 1),
        ("OGG", "VORBIS", 48_000, 2),
        ("MP3", "MPEG_LAYER_III", 22_050, 1),
    ],
)
def test_supported_formats(
    tmp_path: Path, make_speech, fmt: str, subtype: str, sample_rate: int, channels: int
) -> None:
    y = make_speech(sample_rate, voiced_s=VOICED_S, margin_s=MARGIN_S)
    if channels == 2:
        y = np.stack([y, 0.5 * y], axis=1)
    path = write(tmp_path / f"clip.{fmt.lower()}", encode(y, sample_rate, fmt, subtype))

    untrimmed = load_audio(path, trim=False)
    assert untrimmed.dtype == np.float32 and untrimmed.ndim == 1
    assert untrimmed.shape[0] / SAMPLE_RATE == pytest.approx(TOTAL_S, rel=0.02)

    trimmed = load_audio(path.read_bytes())
    assert trimmed.dtype == np.float32 and trimmed.ndim == 1
    # Trim works on 2048-sample frames, so it keeps up to about a frame of margin on each side.
    assert VOICED_S * 0.98 <= trimmed.shape[0] / SAMPLE_RATE <= VOICED_S + 0.15


def test_stereo_is_downmixed_by_mean(make_speech) -> None:
    y = make_speech()
    stereo = np.stack([y, np.zeros_like(y)], axis=1)
    out = load_audio(encode(stereo, SAMPLE_RATE, subtype="FLOAT"), trim=False)
    np.testing.assert_allclose(out, y / 2, atol=1e-7)


def test_resampling_keeps_the_pitch() -> None:
    sample_rate = 44_100
    t = np.arange(sample_rate) / sample_rate
    tone = (0.5 * np.sin(2 * np.pi * 1_000 * t)).astype(np.float32)
    out = load_audio(encode(tone, sample_rate, subtype="FLOAT"), trim=False)
    spectrum = np.abs(np.fft.rfft(out))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / out.shape[0]
    assert peak_hz == pytest.approx(1_000, abs=2)


def test_real_clips_load(real_clips: list[Path]) -> None:
    for path in real_clips:
        info = probe(path)
        assert (info.format, info.sample_rate, info.channels) == ("FLAC", SAMPLE_RATE, 1)
        y = load_audio(path)
        assert y.dtype == np.float32 and y.ndim == 1
        assert 0.25 <= y.shape[0] / SAMPLE_RATE <= info.duration_s
        assert np.all(np.isfinite(y)) and np.max(np.abs(y)) > 0.01
        np.testing.assert_array_equal(y, load_audio(path.read_bytes()))


def test_probe_reads_the_header(make_speech) -> None:
    data = encode(np.stack([make_speech(8_000)] * 2, axis=1), 8_000)
    info = probe(data)
    assert info == audio.AudioInfo(
        sample_rate=8_000,
        channels=2,
        frames=int(TOTAL_S * 8_000),
        duration_s=pytest.approx(TOTAL_S),
        format="WAV",
    )
    with pytest.raises(NotAudioError):
        probe(b"not audio at all")
    with pytest.raises(EmptyAudioError):
        probe(b"")


# --- inputs a hostile tester found (issue #18, items 9 and 11) -------------------------------


def _with_sizes(wav: bytes, riff: int, data: int) -> bytes:
    fixed = bytearray(wav)
    position = wav.index(b"data")
    fixed[4:8] = riff.to_bytes(4, "little")
    fixed[position + 4 : position + 8] = data.to_bytes(4, "little")
    return bytes(fixed)


@pytest.mark.parametrize("riff, data", [(0xFFFFFFFF, 0xFFFFFFFF), (0, 0), (0xFFFFFFFF, 0)])
def test_streaming_wav_placeholder_sizes_decode_what_is_there(
    tmp_path: Path, make_speech, riff: int, data: int
) -> None:
    y = make_speech()
    streamed = _with_sizes(encode(y, SAMPLE_RATE), riff, data)
    expected = load_audio(encode(y, SAMPLE_RATE), trim=False)
    for source in (streamed, write(tmp_path / "streamed.wav", streamed)):
        np.testing.assert_array_equal(load_audio(source, trim=False), expected)


def test_a_wav_shorter_than_its_real_sizes_is_still_truncated(make_speech) -> None:
    wav = encode(make_speech(), SAMPLE_RATE)
    with pytest.raises(TruncatedAudioError):
        load_audio(wav[: len(wav) // 2])


def test_phase_inverted_stereo_falls_back_to_one_channel(make_speech) -> None:
    y = make_speech()
    stereo = np.stack([y, -y], axis=1)
    mono = load_audio(encode(stereo, SAMPLE_RATE))
    np.testing.assert_allclose(mono, load_audio(encode(y, SAMPLE_RATE)), atol=1e-4)


def test_a_cut_ogg_is_truncated(make_speech) -> None:
    ogg = encode(make_speech(), SAMPLE_RATE, "OGG", "VORBIS")
    with pytest.raises(TruncatedAudioError):
        load_audio(ogg[: len(ogg) // 2])


def test_float_samples_far_beyond_full_scale_are_scaled_not_overflowed(make_speech) -> None:
    y = make_speech()
    loud = load_audio(encode(y * 1e20, SAMPLE_RATE, subtype="FLOAT"))
    assert np.all(np.isfinite(loud)) and np.max(np.abs(loud)) == pytest.approx(1.0)
    assert loud.shape == load_audio(encode(y, SAMPLE_RATE, subtype="FLOAT")).shape


def test_a_constant_offset_alone_is_no_speech() -> None:
    dc = np.full(2 * SAMPLE_RATE, 0.3, dtype=np.float32)
    with pytest.raises(NoSpeechError, match="constant offset"):
        load_audio(encode(dc, SAMPLE_RATE, subtype="FLOAT"))


def test_trimming_is_librosas_trim_bit_for_bit_without_importing_it(real_clips, make_speech):
    """The worker trims without librosa.effects (it loads scikit-learn); the edges must be the
    ones librosa.effects.trim finds, on real clips and on the edge cases of its arithmetic."""
    import librosa

    rng = np.random.default_rng(0)
    signals = [load_audio(path, trim=False) for path in real_clips] + [
        make_speech(),
        np.zeros(SAMPLE_RATE, np.float32),  # no frame loud enough: nothing left
        np.r_[np.zeros(5000), 0.5 * rng.standard_normal(3000), np.zeros(7001)].astype(np.float32),
        (1e-3 * rng.standard_normal(700)).astype(np.float32),  # shorter than one frame
    ]
    for y in signals:
        for top_db in (60.0, 20.0):
            expected, _ = librosa.effects.trim(y, top_db=top_db, frame_length=2048, hop_length=512)
            np.testing.assert_array_equal(audio._trimmed(y, top_db), expected)
