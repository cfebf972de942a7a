"""The timeline report's boundary truths (research.timeline_report)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import soundfile as sf

from research.timeline_report import edge_errors, error_summary, speech_edges
from ser_worker.labels import SAMPLE_RATE


def _tone(hz: float, seconds: float, amplitude: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def test_rumble_below_the_voice_band_counts_as_voice_only_in_the_broadband_truth(tmp_path):
    # 0.6 s of 25 Hz rumble, a second of a 150 Hz voice with two harmonics, 0.6 s of rumble:
    # the rumble lies 6 dB below the voice in RMS, far inside the 30 dB trim.
    voice = sum(_tone(150 * k, 1.0, 0.25 / k) for k in (1, 2, 3))
    rumble = _tone(25, 0.6, 0.2)
    path = tmp_path / "clip.flac"
    sf.write(path, np.concatenate([rumble, voice, rumble]), SAMPLE_RATE)
    clip = SimpleNamespace(path=path)

    broadband = speech_edges([clip])[path]
    band = speech_edges([clip], highpass_hz=80.0)[path]

    assert broadband[0] < 0.15 and broadband[1] < 0.15
    assert abs(band[0] - 0.6) < 0.15 and abs(band[1] - 0.6) < 0.15


def test_edge_errors_are_positive_inside_the_voice_and_negative_outside():
    clip = SimpleNamespace(path="c", start_s=10.0, end_s=14.0)
    edges = {"c": (0.5, 1.0)}  # the voice: 10.5-13.0 s
    late_and_early = SimpleNamespace(start_s=10.9, end_s=12.5)
    early_and_late = SimpleNamespace(start_s=10.0, end_s=13.1)
    assert np.allclose(edge_errors(late_and_early, clip, edges), [0.4, 0.5])
    assert np.allclose(edge_errors(early_and_late, clip, edges), [-0.5, -0.1])

    summary = error_summary([0.4, 0.5, -0.5, -0.1], "edge")
    assert summary["edge_within_0.3s"] == 0.25
    assert summary["edge_inside_by_over_0.3s"] == 0.5
    assert summary["edge_outside_by_over_0.3s"] == 0.25
