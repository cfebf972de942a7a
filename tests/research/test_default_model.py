"""The shipped bundle's ensemble weights and expected figures come from the report's folds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cli.main import _score
from research.train_default_model import (
    cross_validated_weights,
    encoder_fold_runs,
    expected_metrics,
    fold_runs,
    with_encoder_share,
)
from ser_worker.labels import EMOTIONS

from .test_report import _result, _side

ESTIMATE = "speaker-ravdess-with-tess"


def test_fold_runs_are_the_speaker_folds_of_the_recipe(tmp_path):
    for name, protocol, recipe, seed in (
        ("speaker-ravdess-with-tess-fold0", "speaker-ravdess-with-tess", "ours", 0),
        ("speaker-ravdess-with-tess-fold0", "speaker-ravdess-with-tess", "ours", 1),
        ("speaker-ravdess-with-tess-fold1", "speaker-ravdess-with-tess", "ours", 0),
        ("speaker-ravdess-with-tess-fold0", "speaker-ravdess-with-tess", "study", 0),
        ("speaker-ravdess-fold0", "speaker-ravdess", "ours", 0),
        ("random-ravdess", "random-ravdess", "ours", 0),
    ):
        run = {**_result(name, protocol, recipe, right=12), "seed": seed}
        (tmp_path / f"{name}--{recipe}--seed{seed}.json").write_text(json.dumps(run))
    runs = fold_runs(tmp_path)
    assert [(r["experiment"], r["recipe"], r["seed"]) for r in runs] == [
        ("speaker-ravdess-with-tess-fold0", "ours", 0),
        ("speaker-ravdess-with-tess-fold0", "ours", 1),
        ("speaker-ravdess-with-tess-fold1", "ours", 0),
    ]
    assert [r["experiment"] for r in fold_runs(tmp_path, protocol="speaker-ravdess")] == [
        "speaker-ravdess-fold0"
    ]
    assert fold_runs(tmp_path / "nothing-here") == []


def test_expected_metrics_average_the_folds():
    runs = [
        _result("speaker-ravdess-fold0", "speaker-ravdess", "ours", right=6),
        _result("speaker-ravdess-fold1", "speaker-ravdess", "ours", right=12),
    ]
    estimate = expected_metrics(runs, weights=None)
    assert estimate["runs"] == ["speaker-ravdess-fold0--seed0", "speaker-ravdess-fold1--seed0"]
    # 8 of 12 and 12 of 12 right (NEU clips are right either way).
    assert estimate["ensemble"]["accuracy"] == pytest.approx((8 / 12 + 1) / 2)
    assert estimate["ensemble"]["runs"] == 2 and estimate["ensemble"]["macro_f1_std"] > 0
    assert expected_metrics([], weights=None) == {}


def test_weights_come_from_validation_and_the_estimate_uses_them():
    # On validation a very sure but wrong cnn1d must weigh less than 0.47 for cnn2d to win.
    val = _side(right_1d=False, right_2d=True)
    val["cnn1d"] = (0.9 * np.asarray(val["cnn1d"]) / 0.62).tolist()
    folds = []
    for fold in (0, 1):
        run = _result(f"speaker-ravdess-fold{fold}", "speaker-ravdess", "ours", right=12)
        run["probabilities"] = {"val": val, "test": _side(right_1d=False, right_2d=True)}
        folds.append(run)
    no_outputs = _result("speaker-ravdess-fold2", "speaker-ravdess", "ours", right=0)

    weights = cross_validated_weights([*folds, no_outputs])
    assert weights == {"cnn1d": 0.4, "cnn2d": 0.6}
    estimate = expected_metrics([*folds, no_outputs], weights)
    assert estimate["ensemble"]["weights"] == weights
    assert estimate["ensemble"]["runs"] == 2  # only the runs that kept their outputs
    assert estimate["ensemble"]["macro_f1"] == 1.0
    assert estimate["cnn2d"]["runs"] == 3
    assert cross_validated_weights([no_outputs]) is None


def test_the_encoder_takes_its_validation_share_and_the_estimate_pairs_its_runs(tmp_path):
    cnn_test = _side(right_1d=False, right_2d=False)  # both CNNs sure of NEU
    runs = []
    for fold in (0, 1, 2):
        run = _result(f"speaker-ravdess-with-tess-fold{fold}", ESTIMATE, "ours", right=12)
        run["probabilities"] = {"val": cnn_test, "test": cnn_test}
        runs.append(run)
    right = (0.7 * np.eye(6) + 0.05).tolist()
    encoder_rows = [
        {
            "experiment": f"speaker-ravdess-with-tess-fold{fold}",
            "protocol": ESTIMATE,
            "seed": 0,
            "encoder": {"accuracy": 1.0, "macro_f1": 1.0},
            "encoder_share": share,
            "probabilities": {"test": {"labels": list(EMOTIONS), "encoder": right}},
        }
        # fold 2 has no encoder run: the ensemble estimate leaves it out
        for fold, share in ((0, 0.5), (1, 0.7))
    ]
    encoder_rows.append({**encoder_rows[0], "protocol": "speaker-ravdess"})
    path = tmp_path / "runs.json"
    path.write_text(json.dumps(encoder_rows))
    encoder_runs = encoder_fold_runs(path)
    assert sorted(encoder_runs) == [
        "speaker-ravdess-with-tess-fold0--seed0",
        "speaker-ravdess-with-tess-fold1--seed0",
    ]
    weights = with_encoder_share({"cnn1d": 0.4, "cnn2d": 0.6}, encoder_runs)
    assert weights == {"encoder": 0.6, "cnn1d": 0.16, "cnn2d": 0.24}
    assert with_encoder_share({"cnn1d": 0.4, "cnn2d": 0.6}, {}) == {"cnn1d": 0.4, "cnn2d": 0.6}
    estimate = expected_metrics(runs, weights, encoder_runs)
    assert estimate["encoder"]["macro_f1"] == 1.0 and estimate["encoder"]["runs"] == 2
    # 0.6 x 0.75 for the right class beats 0.16 x 0.62 + 0.24 x 0.82 + 0.6 x 0.05 for NEU.
    assert estimate["ensemble"]["macro_f1"] == 1.0
    assert estimate["ensemble"]["runs"] == 2
    assert estimate["ensemble"]["weights"] == weights
    assert encoder_fold_runs(tmp_path / "missing.json") == {}


def test_models_listing_says_whether_a_score_was_measured_or_is_expected():
    measured = {"metrics": {"ensemble": {"macro_f1": 0.61}}, "expected_metrics": {}}
    expected = {
        "metrics": {},
        "expected_metrics": {"ensemble": {"macro_f1": 0.5, "macro_f1_std": 0.04, "runs": 25}},
    }
    older = {
        "metrics": {},
        "expected_metrics": {"ensemble": {"macro_f1": 0.5, "macro_f1_std": 0.04, "folds": 3}},
    }
    assert _score(measured) == "macro-F1 0.610"
    assert _score(expected) == (
        "macro-F1 0.500 ± 0.040 expected on unseen speakers (cross-validated over 25 runs)"
    )
    assert _score(older).endswith("(cross-validated over 3 runs)")
    assert _score({"metrics": {}, "expected_metrics": {}}) == ""
