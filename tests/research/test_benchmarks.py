"""The pure parts of benchmarks/ on tiny inputs: the study's formulation, FLOP counting, targets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import report, run
from benchmarks.flops import layer_flops, model_flops
from benchmarks.memory import proc_status
from benchmarks.study_features import agreement, study_energy, study_extract
from ser_worker.audio import load_audio
from ser_worker.features.study import FeatureSettings, extract, frame_energy

S = FeatureSettings()


def test_study_formulation_matches_ours_on_real_clips(real_clips: list[Path]) -> None:
    for path in (real_clips[0], real_clips[-1]):  # one RAVDESS, one TESS clip
        ours = extract(load_audio(path), S)
        study = study_extract(path, S)
        result = agreement(study, ours)
        assert result.ok, result
        assert study.zcr.shape == ours.zcr.shape == (1 + len(load_audio(path)) // S.hop_length,)


def test_study_energy_loop_is_the_centred_frame_mean() -> None:
    y = (0.1 * np.random.default_rng(1).standard_normal(5_000)).astype(np.float32)
    np.testing.assert_allclose(study_energy(y, S), frame_energy(y, S), rtol=1e-5)


def test_agreement_flags_different_outputs(real_clips: list[Path]) -> None:
    ours = extract(load_audio(real_clips[0]), S)
    shifted = extract(load_audio(real_clips[0]), S)
    shifted.mel_db = shifted.mel_db + 0.5
    assert not agreement(shifted, ours).ok
    shorter = extract(load_audio(real_clips[0])[:-2048], S)
    assert not agreement(shorter, ours).ok


def test_flops_of_the_two_cnns() -> None:
    from ser_worker.models.cnn import build_cnn1d, build_cnn2d

    # 2 x multiply-adds of each conv (positions x kernel x in x out) and dense layer, by hand.
    cnn1d_macs = (
        (800 * 3 * 1 * 64 + 400 * 3 * 64 * 128 + 200 * 3 * 128 * 256 + 100 * 3 * 256 * 512)
        + 512 * 128
        + 128 * 6
    )
    cnn2d_macs = (
        (
            128 * 112 * 9 * 1 * 64
            + 64 * 56 * 9 * 64 * 128
            + 32 * 28 * 9 * 128 * 256
            + 16 * 14 * 9 * 256 * 512
        )
        + 512 * 128
        + 128 * 6
    )
    cnn1d, cnn2d = build_cnn1d(), build_cnn2d()
    assert model_flops(cnn1d) == 2 * cnn1d_macs == 138_065_408
    assert model_flops(cnn2d) == 2 * cnn2d_macs == 1_602_094_592
    assert [layer.kind for layer in layer_flops(cnn2d)] == ["Conv2D"] * 4 + ["Dense"] * 2


def test_select_clips_spreads_over_the_listing(tmp_path: Path) -> None:
    for i in range(10):
        (tmp_path / f"{i:02d}.flac").touch()
    (tmp_path / "notes.txt").touch()
    chosen = run.select_clips(tmp_path, 5)
    assert [p.name for p in chosen] == ["00.flac", "02.flac", "04.flac", "06.flac", "08.flac"]
    assert len(run.select_clips(tmp_path, 50)) == 10


def test_the_script_starts_from_any_folder_and_knows_its_sections(tmp_path: Path) -> None:
    # Run as a script, benchmarks/ itself heads sys.path; the package must still be the way in.
    script = Path(run.__file__).resolve()
    result = subprocess.run(
        [sys.executable, str(script), "--help"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "--skip-service" in result.stdout and "--report" in result.stdout
    assert set(run.SECTIONS) == {
        "features",
        "bundle",
        "inference",
        "baseline",
        "training",
        "training_data",
    }


def test_targets_report_met_and_missed() -> None:
    result = report.targets(
        {"features_speedup": 3.5, "scaling_2_workers": 1.2, "worker_cold_start_s": 4.0}
    )
    assert result["features_speedup"]["met"] is True
    assert result["scaling_2_workers"]["met"] is False
    assert result["worker_cold_start_s"]["met"] is True
    assert "service_efficiency_1_worker" not in result


def test_targets_of_the_encoder_issue_and_the_earlier_path_ratio() -> None:
    from benchmarks.service import summarise

    def run_(wall: float) -> dict:
        return {"wall": wall, "first_result_s": 1.0, "last_result_s": wall, "worker_cpu_s": wall}

    runs = {
        "inproc": [{"wall": 4.0, "cpu_s": 4.0}] * 3,
        "w1": [run_(5.0), run_(5.0), run_(4.0)],
        "w2": [run_(3.0)] * 3,
        "old1": [run_(10.0), run_(8.0), run_(12.0)],
    }
    summary = summarise(runs, n=64, batch=16)
    # Per-run ratios of contenders measured back to back (10/5, 8/5, 12/4), then the median.
    assert summary["speedup_1_worker_vs_old_path"] == pytest.approx(2.0)
    keys = report.summary_keys(
        {
            "service": {
                **summary,
                "cold_1": {"spawn_to_first_result_s": 6.0},
                "memory": {1: {"children_mb": [900.0]}},
            }
        }
    )
    verdict = report.targets(keys)
    assert verdict["service_speedup_1_worker"]["met"] is True
    assert verdict["worker_cold_start_s"]["met"] is False  # 6 s > 5 s
    assert verdict["worker_rss_mb"]["met"] is True  # 900 MB <= 1.0 GB
    assert verdict["scaling_2_workers"]["value"] == pytest.approx(5 / 3)
    assert verdict["scaling_2_workers"]["met"] is False  # 1.67 < 1.8


def test_the_earlier_path_app_picks_ctranslate2_and_keras() -> None:
    code = (
        "import benchmarks.old_path as o, ser_worker.models.encoder as e, "
        "ser_worker.service.runtime as r, sys; "
        "assert e.load_encoder.keywords == {'backend': 'ctranslate2'}; "
        "assert r.load_bundle.keywords == {'runtime': 'keras'}; "
        "assert o.app.main == 'ser_worker'; "
        "assert 'tensorflow' not in sys.modules and 'ctranslate2' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_peak_rss_is_read_from_proc() -> None:
    status = proc_status()
    if not status:
        pytest.skip("no /proc on this system")
    assert status["VmHWM"] >= status["VmRSS"] > 0


def _edge_signals() -> list[np.ndarray]:
    rng = np.random.default_rng(2)
    near_zero = np.zeros(3_000, dtype=np.float32)
    near_zero[::7] = -0.0
    near_zero[::5] = 1e-10  # at librosa's threshold: counts as zero
    near_zero[::11] = -1e-10
    near_zero[::13] = -2e-10  # beyond it: negative
    return [
        rng.standard_normal(2_049).astype(np.float32),
        (1e-11 * rng.standard_normal(5_000)).astype(np.float32),
        near_zero,
    ]


def test_fast_zcr_and_log_mel_equal_librosa_bit_for_bit(real_clips: list[Path]) -> None:
    """features.py computes ZCR in one pass and caches the mel filter bank (the per-core speedup
    the benchmark reports); the values must stay exactly librosa's."""
    import librosa

    from ser_worker.features.study import log_mel, zero_crossing_rate

    signals = [load_audio(real_clips[0]), load_audio(real_clips[-1]), *_edge_signals()]
    for y in signals:
        zcr = librosa.feature.zero_crossing_rate(y, frame_length=2048, hop_length=512)[0]
        np.testing.assert_array_equal(zero_crossing_rate(y, S), zcr.astype(np.float32))
        mel = librosa.feature.melspectrogram(y=y, sr=16_000, n_fft=2048, hop_length=512, n_mels=128)
        reference = librosa.power_to_db(mel, ref=np.max).astype(np.float32)
        np.testing.assert_array_equal(log_mel(y, S), reference)
