"""The shipped bundle's expected figures come from the cross-validation runs of the report."""

from __future__ import annotations

import json

import pytest

from cli.main import _score
from scripts.train_default_model import expected_metrics

from .test_report import _result


def test_expected_metrics_average_the_speaker_folds_of_the_recipe(tmp_path):
    for fold, right in ((0, 6), (1, 12)):
        for recipe in ("ours", "study"):
            run = _result(f"speaker-ravdess-fold{fold}", "speaker-ravdess", recipe, right)
            path = tmp_path / f"speaker-ravdess-fold{fold}--{recipe}--seed0.json"
            path.write_text(json.dumps(run))
    random_split = _result("random-ravdess", "random-ravdess", "ours", right=0)
    (tmp_path / "random-ravdess--ours--seed0.json").write_text(json.dumps(random_split))

    estimate = expected_metrics(tmp_path)

    assert estimate["runs"] == ["speaker-ravdess-fold0", "speaker-ravdess-fold1"]
    assert "2 folds" in estimate["protocol"]
    # 8 of 12 and 12 of 12 right (NEU clips are right either way).
    assert estimate["ensemble"]["accuracy"] == pytest.approx((8 / 12 + 1) / 2)
    assert estimate["ensemble"]["macro_f1_std"] > 0
    assert expected_metrics(tmp_path / "nothing-here") == {}


def test_models_listing_says_whether_a_score_was_measured_or_is_expected():
    measured = {"metrics": {"ensemble": {"macro_f1": 0.61}}, "expected_metrics": {}}
    expected = {
        "metrics": {},
        "expected_metrics": {"ensemble": {"macro_f1": 0.5, "macro_f1_std": 0.04}},
    }
    assert _score(measured) == "macro-F1 0.610"
    assert _score(expected) == (
        "macro-F1 0.500 ± 0.040 expected on unseen speakers (cross-validated)"
    )
    assert _score({"metrics": {}, "expected_metrics": {}}) == ""
