"""The shipped bundle's ensemble weights and expected figures come from the runs its recipe
record names (research/default_model_recipe.json), and from nothing else."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cli.render import score
from research.common import run_file, run_key
from research.default_model import (
    DefaultModelRecipe,
    RecipeError,
    RunFile,
    cross_validated_weights,
    expected_metrics,
    record,
    with_encoder_share,
)
from ser_worker.bundle import shipped_bundle_bytes
from ser_worker.evaluation.ensemble import normalised_weights
from ser_worker.labels import EMOTIONS, MODEL_NAMES, POOL_ALL
from ser_worker.models.encoder import POOLING

from .test_report import _result, _side

ESTIMATE = "speaker-ravdess-with-tess"


def _same_figures(got, want) -> bool:
    """Equal, but for floats within a few units in the last place: numpy's exp and log round
    differently with and without AVX-512, so a figure recomputed on another CPU (the ECE after
    temperature scaling) may differ in its last digit (0.01855534051866212 against ...2117)."""
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and got.keys() == want.keys()
            and all(_same_figures(got[k], want[k]) for k in want)
        )
    if isinstance(want, list):
        return (
            isinstance(got, list)
            and len(got) == len(want)
            and all(_same_figures(g, w) for g, w in zip(got, want, strict=True))
        )
    if isinstance(want, float) and isinstance(got, float):
        return math.isclose(got, want, rel_tol=1e-12, abs_tol=0.0)
    return got == want


def test_figures_are_compared_to_the_last_digits_only():
    assert _same_figures({"a": [0.018555340518662117]}, {"a": [0.01855534051866212]})
    assert not _same_figures({"a": [0.0185553405186]}, {"a": [0.01855534051866212]})
    assert not _same_figures({"a": 1.0, "b": 2.0}, {"a": 1.0})


@pytest.fixture(scope="module")
def shipped() -> dict:
    with zipfile.ZipFile(io.BytesIO(shipped_bundle_bytes())) as archive:
        return json.loads(archive.read("manifest.json"))


def test_the_record_reproduces_the_shipped_bundle(shipped):
    recipe = DefaultModelRecipe.load()
    assert recipe.ensemble_weights == shipped["ensemble_weights"]
    assert recipe.ensemble_weights == {"encoder": 0.6, "cnn1d": 0.16, "cnn2d": 0.24}
    calibration = shipped["calibration"]
    assert (calibration["temperature"], calibration["adapted_temperature"]) == (
        recipe.temperature,
        recipe.adapted_temperature,
    )
    # Recomputed from the run files the record names, checked against their hashes.
    assert _same_figures(recipe.expected_metrics(), shipped["expected_metrics"])
    assert [f"{run.path.rsplit('/', 1)[-1]}" for run in recipe.cnn_runs] == [
        run_file(key.rsplit("--", 1)[0], recipe.recipe, int(key.rsplit("seed", 1)[1]))
        for key in shipped["expected_metrics"]["runs"]
    ]
    # The CNN ensemble the encoder report pairs with is the shipped one without the encoder.
    cnns = normalised_weights(shipped["ensemble_weights"], MODEL_NAMES)
    assert cnns == pytest.approx(recipe.cnn_weights)
    # And the record says how the shipped bundle was trained.
    training = shipped["training_data"]
    assert (training["config"]["epochs"], training["config"]["precision"]) == (
        recipe.epochs,
        recipe.precision,
    )
    assert training["config"]["seed"] == recipe.seed
    assert tuple(shipped["encoder"]["layers"]) == recipe.encoder_layers
    assert shipped["encoder"]["pooling"] == recipe.encoder_pooling == POOLING
    assert f"C={recipe.head_strength}," in training["encoder"]
    monitored = range(0, training["clips"], recipe.monitor_every)
    assert len(monitored) == shipped["split"]["sizes"]["val"]


def test_the_record_is_what_its_runs_give():
    recipe = DefaultModelRecipe.load()
    assert record(recipe) == recipe


def _fake_repo(tmp_path: Path, pooling: str = POOLING) -> DefaultModelRecipe:
    """A repository holding 3 folds of one seed and their encoder rows (pooled `pooling`), and
    its record."""
    results = tmp_path / "research" / "results"
    (results / "encoder").mkdir(parents=True)
    val = _side(right_1d=False, right_2d=True)
    val["cnn1d"] = (0.9 * np.asarray(val["cnn1d"]) / 0.62).tolist()
    rows = []
    for fold in (0, 1, 2):
        name = f"{ESTIMATE}-fold{fold}"
        run = {**_result(name, ESTIMATE, "ours", right=12), "epochs_max": 40}
        run["probabilities"] = {"val": val, "test": _side(right_1d=False, right_2d=True)}
        (results / run_file(name, "ours", 0)).write_text(json.dumps(run))
        rows.append(
            {
                "experiment": name,
                "protocol": ESTIMATE,
                "seed": 0,
                "recipe": {"pooling": pooling},
                "encoder": {"accuracy": 1.0, "macro_f1": 1.0},
                "encoder_share": 0.5,
                "probabilities": {
                    "test": {"labels": list(EMOTIONS), "encoder": np.eye(6).tolist()}
                },
            }
        )
    (results / "encoder" / "runs.json").write_text(json.dumps(rows))
    base = DefaultModelRecipe.load().model_copy(
        update={
            "folds": (0, 1, 2, 3),
            "seeds": (0,),
            "encoder_runs": RunFile(path="research/results/encoder/runs.json", sha256=""),
            "adapted_runs": None,
        }
    )
    return record(base, results, tmp_path)


def test_a_record_lists_the_runs_that_exist_and_the_weights_they_give(tmp_path):
    recipe = _fake_repo(tmp_path)
    assert [run.path for run in recipe.cnn_runs] == [
        f"research/results/{ESTIMATE}-fold{fold}--ours--seed0.json" for fold in (0, 1, 2)
    ]
    assert recipe.cnn_weights == {"cnn1d": 0.4, "cnn2d": 0.6}
    assert recipe.encoder_share == 0.5
    assert recipe.ensemble_weights == {"encoder": 0.5, "cnn1d": 0.2, "cnn2d": 0.3}
    saved = tmp_path / "record.json"
    recipe.save(saved)
    assert DefaultModelRecipe.load(saved) == recipe
    assert recipe.runs(tmp_path).cnn[0]["experiment"] == f"{ESTIMATE}-fold0"


def test_a_missing_or_changed_run_or_weight_is_an_error(tmp_path):
    recipe = _fake_repo(tmp_path)
    assert recipe.expected_metrics(tmp_path)["ensemble"]["runs"] == 3
    tampered = recipe.model_copy(update={"ensemble_weights": {"encoder": 1.0}})
    with pytest.raises(RecipeError, match="runs give weights"):
        tampered.verified(tmp_path)
    fewer_folds = recipe.model_copy(update={"folds": (0, 1)})
    with pytest.raises(RecipeError, match="fold2--ours--seed0.json is not a run of the record"):
        fewer_folds.runs(tmp_path)
    first = tmp_path / recipe.cnn_runs[0].path
    first.write_text(first.read_text().replace('"seed": 0', '"seed": 0 '))
    with pytest.raises(RecipeError, match="fold0--ours--seed0.json changed since"):
        recipe.runs(tmp_path)
    first.unlink()
    with pytest.raises(RecipeError, match="fold0--ours--seed0.json, a run of .* is missing"):
        recipe.runs(tmp_path)
    with pytest.raises(ValueError):  # a record is typed: no unknown or missing fields
        DefaultModelRecipe.model_validate(recipe.model_dump() | {"glob": "*.json"})
    other = RunFile.of(tmp_path / recipe.cnn_runs[1].path, tmp_path)
    assert other == recipe.cnn_runs[1]


def test_a_record_whose_encoder_runs_pool_otherwise_is_an_error(tmp_path):
    recipe = _fake_repo(tmp_path, pooling=POOL_ALL)
    with pytest.raises(RecipeError, match=r"its encoder runs \['all'\]"):
        recipe.verified(tmp_path)
    with pytest.raises(RecipeError, match="the service"):
        recipe.model_copy(update={"encoder_pooling": POOL_ALL}).verified(tmp_path)


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


def test_the_encoder_takes_its_validation_share_and_the_estimate_pairs_its_runs():
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
    encoder_runs = {run_key(row): row for row in encoder_rows}
    weights = with_encoder_share({"cnn1d": 0.4, "cnn2d": 0.6}, encoder_runs)
    assert weights == {"encoder": 0.6, "cnn1d": 0.16, "cnn2d": 0.24}
    assert with_encoder_share({"cnn1d": 0.4, "cnn2d": 0.6}, {}) == {"cnn1d": 0.4, "cnn2d": 0.6}
    estimate = expected_metrics(runs, weights, encoder_runs)
    assert estimate["encoder"]["macro_f1"] == 1.0 and estimate["encoder"]["runs"] == 2
    # 0.6 x 0.75 for the right class beats 0.16 x 0.62 + 0.24 x 0.82 + 0.6 x 0.05 for NEU.
    assert estimate["ensemble"]["macro_f1"] == 1.0
    assert estimate["ensemble"]["runs"] == 2
    assert estimate["ensemble"]["weights"] == weights


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
    assert score(measured) == "macro-F1 0.610"
    assert score(expected) == (
        "macro-F1 0.500 ± 0.040 expected on unseen speakers (cross-validated over 25 runs)"
    )
    assert score(older).endswith("(cross-validated over 3 runs)")
    assert score({"metrics": {}, "expected_metrics": {}}) == ""


@pytest.mark.slow
def test_the_build_takes_the_records_weights_and_estimate(tmp_path, shipped):
    """The shipped bundle's CNNs, a head fitted on the 12 test clips: the bundle the script
    writes carries the record's weights and the shipped expected figures."""
    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "bundle.zip"
    command = [sys.executable, "-m", "research.train_default_model", "--data", "tests/data"]
    command += ["--cnn-weights-from", "ser_worker/data/default_bundle.zip", "--out", str(out)]
    command += ["--docs", str(tmp_path / "docs")]
    env = os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True, timeout=600)
    with zipfile.ZipFile(out) as archive:
        built = json.loads(archive.read("manifest.json"))
    assert built["ensemble_weights"] == shipped["ensemble_weights"]
    assert _same_figures(built["expected_metrics"], shipped["expected_metrics"])
    assert built["encoder"]["layers"] == shipped["encoder"]["layers"]
    report = json.loads((tmp_path / "docs" / "default_model.json").read_text())
    assert _same_figures(report["expected_metrics"], shipped["expected_metrics"])
