"""features.dsp repeats librosa's operations so that the worker need not import librosa: every
function must give librosa's numbers exactly, on real clips and on the awkward lengths."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile as sf

from ser_worker.features import dsp

REPO = Path(__file__).resolve().parents[2]
# Shorter than a frame, one sample past a hop, librosa's head/tail split on both sides, long.
LENGTHS = (1, 399, 513, 2047, 2048, 2049, 3001, 16_000, 48_017)


def signals(real_clips: list[Path]):
    rng = np.random.default_rng(7)
    for n in LENGTHS:
        yield f"noise-{n}", (rng.standard_normal(n) * 0.1).astype(np.float32)
    for clip in real_clips[:4]:
        y, _ = sf.read(clip, dtype="float32")
        yield clip.name, y


def test_the_window_is_scipys_periodic_hann() -> None:
    for n in (400, 2048, 2047):
        np.testing.assert_array_equal(dsp.hann(n), scipy.signal.get_window("hann", n, fftbins=True))


@pytest.mark.filterwarnings("ignore:n_fft=.* is too large:UserWarning")
@pytest.mark.parametrize(
    ("n_fft", "hop", "pad_mode"), [(2048, 512, "constant"), (400, 160, "reflect")]
)
def test_stft_is_librosas(real_clips: list[Path], n_fft: int, hop: int, pad_mode: str) -> None:
    for name, y in signals(real_clips):
        if pad_mode == "reflect" and y.shape[0] <= n_fft // 2:
            continue  # numpy cannot reflect a signal shorter than the padding; nor can librosa
        expected = librosa.stft(y, n_fft=n_fft, hop_length=hop, pad_mode=pad_mode)
        got = dsp.stft(y, n_fft, hop, pad_mode=pad_mode)
        assert got.dtype == expected.dtype == np.complex64, name
        np.testing.assert_array_equal(got, expected, err_msg=name)


@pytest.mark.parametrize(
    ("sample_rate", "n_fft", "n_mels"), [(16_000, 2048, 128), (16_000, 400, 80), (22_050, 1024, 64)]
)
def test_mel_filters_are_librosas(sample_rate: int, n_fft: int, n_mels: int) -> None:
    expected = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)
    got = dsp.mel_filters(sample_rate, n_fft, n_mels)
    assert got.dtype == expected.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    assert not got.flags.writeable  # cached: a caller must not change everyone's copy


def test_decibels_and_rms_are_librosas(real_clips: list[Path]) -> None:
    for name, y in signals(real_clips):
        if y.shape[0] < 2048:
            continue
        rms = librosa.feature.rms(y=y, frame_length=2048, hop_length=512)[0]
        np.testing.assert_array_equal(dsp.rms(y, 2048, 512), rms, err_msg=name)
        np.testing.assert_array_equal(
            dsp.amplitude_to_db(rms.copy()),
            librosa.amplitude_to_db(rms, ref=np.max, top_db=None),
            err_msg=name,
        )
        power = np.abs(librosa.stft(y)) ** 2
        np.testing.assert_array_equal(
            dsp.power_to_db(power), librosa.power_to_db(power, ref=np.max)
        )
        np.testing.assert_array_equal(
            dsp.power_to_db(power, ref=1.0, top_db=None),
            librosa.power_to_db(power, ref=1.0, top_db=None),
        )


def test_a_worker_clip_imports_neither_librosa_nor_numba(real_clips: list[Path]) -> None:
    """What the worker runs per clip (decode and trim, the study's features, Whisper's input
    features) must not load librosa: its import is most of a cold start (features.dsp)."""
    code = (
        "import sys\n"
        "from ser_worker.audio import load_audio\n"
        "from ser_worker.features.study import FeatureSettings, extract\n"
        "from ser_worker.models.encoder.frontend import encoder_windows\n"
        f"y = load_audio({str(real_clips[0])!r})\n"
        "extract(y, FeatureSettings())\n"
        "encoder_windows(y)\n"
        "print(sorted(m for m in ('librosa', 'numba', 'sklearn') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
