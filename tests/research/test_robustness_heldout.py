"""A fold bundle scored on its held-out speakers under each condition (research.robustness_shipped),
with a stand-in bundle: which clips each group scores and what the table says."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from research import robustness_shipped
from ser_worker.datasets.corpus import LabelledClip
from ser_worker.labels import EMOTIONS


class Bundle:
    """Right on every clean clip; under noise, right on ravdess:02's clips and ANG on 03's."""

    version = "fold-test"
    labels = EMOTIONS
    manifest = SimpleNamespace(split={"train_speakers": ["ravdess:01"]})

    def predict(self, signals, sampling_rate):
        answers = []
        for y in signals:
            emotion, speaker, noisy = EMOTIONS[int(y[0])], int(y[1]), bool(y[2])
            label = "ANG" if noisy and speaker == 1 else emotion
            probabilities = {e: float(e == label) for e in EMOTIONS}
            answers.append({"encoder": SimpleNamespace(emotion=label, probabilities=probabilities)})
        return answers


@pytest.fixture
def fold(monkeypatch, tmp_path):
    clips = [
        LabelledClip(Path(f"{s}-{e}.wav"), e, f"ravdess:{s}", "ravdess")
        for s in ("02", "03")
        for e in EMOTIONS
    ]
    signal = {
        clip.path: np.array([EMOTIONS.index(clip.emotion), int(clip.speaker[-2:]) - 2, 0.0])
        for clip in clips
    }
    monkeypatch.setattr(robustness_shipped, "corpora", lambda data: (clips, []))
    monkeypatch.setattr("ser_worker.audio.load_audio", lambda path, trim: signal[path])
    monkeypatch.setattr("ser_worker.bundle.load_bundle", lambda path: Bundle())
    monkeypatch.setattr(
        robustness_shipped,
        "CONDITIONS",
        {"clean": lambda y, rng: y, "noise-15dB": lambda y, rng: y + np.array([0, 0, 1.0])},
    )
    monkeypatch.setattr(robustness_shipped, "RESULTS", tmp_path)
    return tmp_path


def test_each_group_scores_its_own_speakers_and_all_of_them_together(fold):
    result = robustness_shipped.heldout_robustness(
        Path("data"),
        Path("fold.zip"),
        {"validation": frozenset({"ravdess:02"}), "test": frozenset({"ravdess:03"})},
        probabilities_out=fold / "probabilities.npz",
    )

    groups = result["groups"]
    assert [groups[g]["clips"] for g in ("validation", "test", "all held-out")] == [6, 6, 12]
    assert groups["validation"]["macro_f1"]["noise-15dB"]["encoder"] == 1.0
    # Speaker 03 answers ANG for everything under noise: F1 2/7 for ANG, 0 for the rest.
    assert groups["test"]["macro_f1"]["noise-15dB"]["encoder"] == pytest.approx(2 / 7 / 6)
    assert groups["test"]["unchanged"]["noise-15dB"]["encoder"] == pytest.approx(1 / 6)
    assert groups["all held-out"]["unchanged"]["noise-15dB"]["encoder"] == pytest.approx(7 / 12)
    assert (fold / "robustness" / "heldout--fold-test.json").exists()
    assert groups["validation"]["change_ci95"]["noise-15dB"]["encoder"] == [0.0, 0.0]
    low, high = groups["all held-out"]["change_ci95"]["noise-15dB"]["encoder"]
    assert low < groups["all held-out"]["macro_f1"]["noise-15dB"]["encoder"] - 1 < high < 0
    saved = np.load(fold / "probabilities.npz")
    assert saved["noise-15dB/encoder"].shape == (12, len(EMOTIONS))
    assert list(saved["speaker"][:2]) == ["ravdess:02", "ravdess:02"]

    table = robustness_shipped.heldout_table(result)
    assert "| noise-15dB | 0.048 (-0.952; " in table  # the test group, 17% unchanged
    assert "· 17% |" in table


def test_the_bootstrap_scores_macro_f1_as_evaluate_does():
    from ser_worker.evaluation.metrics import evaluate

    rng = np.random.default_rng(1)
    # Only four classes true, five predicted: absent classes must not count.
    truth = rng.integers(0, 4, 60)
    found = np.where(rng.random(60) < 0.6, truth, rng.integers(0, 5, 60))
    expected = evaluate([EMOTIONS[i] for i in truth], [EMOTIONS[i] for i in found])["macro_f1"]
    assert robustness_shipped._macro_f1(truth, found, len(EMOTIONS)) == pytest.approx(expected)


def test_a_speaker_the_bundle_was_trained_on_is_refused(fold):
    with pytest.raises(ValueError, match="ravdess:01"):
        robustness_shipped.heldout_robustness(
            Path("data"), Path("fold.zip"), {"test": frozenset({"ravdess:01", "ravdess:03"})}
        )
