"""The shipped bundle's recipe: a typed record of how it is trained and of the cross-validation
runs that give its ensemble weights and its expected figures on unseen speakers.

research/default_model_recipe.json names every run file it was derived from with its SHA-256,
so a run that goes missing or is rewritten stops the build instead of quietly changing what
ships. The bundle has no validation speakers of its own: its weights are the ones the folds
chose on their validation actors, and its expected figures are the folds' test figures.

    python -m research.default_model check    # recompute the weights and figures from the runs
    python -m research.default_model record   # remake the record after new runs (report.py
                                              # run, encoder_report.py run); training fields kept
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

if not __package__:  # run as a file: import research.* as `python -m research.default_model` would
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from research.common import REPO, RESULTS, run_file, run_key
from research.protocols import MODELS
from ser_worker.labels import CNN1D, CNN2D, ENCODER, ENSEMBLE, POOL_ALL

RECORD = REPO / "research" / "default_model_recipe.json"


class RecipeError(Exception):
    """The record does not match the run files it names, or they do not give its weights."""


class RunFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str  # relative to the repository root
    sha256: str

    @classmethod
    def of(cls, path: Path, repo: Path = REPO) -> RunFile:
        return cls(path=path.relative_to(repo).as_posix(), sha256=_sha256(path.read_bytes()))

    def read(self, repo: Path = REPO):
        """The file's JSON, once its bytes are the ones the record was made from."""
        path = repo / self.path
        if not path.exists():
            raise RecipeError(f"{self.path}, a run of the default model's record, is missing")
        data = path.read_bytes()
        if _sha256(data) != self.sha256:
            raise RecipeError(
                f"{self.path} changed since the default model's record was made: check why, then "
                "remake the record (python -m research.default_model record)"
            )
        return json.loads(data)


class DefaultModelRecipe(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # The cross-validation runs: speaker folds whose training data is made like the bundle's.
    protocol: str
    recipe: str
    folds: tuple[int, ...]
    seeds: tuple[int, ...]
    fold_epochs: int
    fold_precision: str
    # The bundle's own training, on every clip (research/train_default_model.py's defaults).
    epochs: int
    precision: str
    monitor_every: int
    seed: int
    encoder_layers: tuple[int, ...]
    # How the head's vectors pool the encoder's frames (ser_worker.models.encoder.pooling); the
    # encoder runs must be of the same pooling.
    encoder_pooling: str = POOL_ALL
    head_strength: float  # C of the encoder's logistic-regression head
    # Channel copies of every clip the heads also learn from (features.channel); the encoder
    # runs are then research.robustness's rows of that recipe.
    channel_copies: int = 0
    # The ensemble's temperature, fitted on the validation actors of every run together with
    # the bundle's weights; the same for the adapted encoder (per-submission adaptation), from
    # the robustness rows of the adapted recipe.
    temperature: float = 1.0
    adapted_runs: RunFile | None = None
    adapted_temperature: float = 1.0
    # What the runs give, recorded so a change to them shows in review.
    cnn_runs: tuple[RunFile, ...]
    encoder_runs: RunFile  # research/encoder_report.py's rows; those of `protocol` are used
    cnn_weights: dict[str, float]
    encoder_share: float
    ensemble_weights: dict[str, float]

    @classmethod
    def load(cls, path: Path = RECORD) -> DefaultModelRecipe:
        return cls.model_validate_json(path.read_text())

    def save(self, path: Path = RECORD) -> None:
        text = json.dumps(self.model_dump(mode="json"), indent=2)
        # Folds, seeds and layers on one line each: the record is read in review.
        text = re.sub(r"\[[\d,\s]*\]", lambda m: json.dumps(json.loads(m.group())), text)
        path.write_text(text + "\n")

    def runs(self, repo: Path = REPO) -> FoldRuns:
        """The record's runs, each checked against its hash and against the record's protocol."""
        folds = {f"{self.protocol}-fold{fold}" for fold in self.folds}
        wanted = (self.protocol, self.recipe, self.fold_epochs, self.fold_precision)
        cnn = [run.read(repo) for run in self.cnn_runs]
        for path, run in zip(self.cnn_runs, cnn, strict=True):
            made = (run["protocol"], run["recipe"], run["epochs_max"], run["precision"])
            if made != wanted or run["experiment"] not in folds or run["seed"] not in self.seeds:
                raise RecipeError(f"{path.path} is not a run of the record's folds and seeds")
        rows = self.encoder_runs.read(repo)
        return FoldRuns(
            cnn,
            {run_key(row): row for row in rows if row["protocol"] == self.protocol},
            self.protocol,
        )

    def verified(self, repo: Path = REPO) -> FoldRuns:
        """The runs, once they give the recorded weights and the encoder pools the service's
        blocks."""
        from ser_worker.models.encoder import LAYERS, POOLING

        if self.encoder_layers != LAYERS:
            raise RecipeError(
                f"the record pools blocks {self.encoder_layers}, the service {LAYERS}"
            )
        if self.encoder_pooling != POOLING:
            raise RecipeError(f"the record pools {self.encoder_pooling!r}, the service {POOLING!r}")
        for rows in (self.encoder_runs.read(repo), self.adapted_rows(repo)):
            # Rows from before the pooling was recorded pooled every frame alike.
            pooled = {row.get("recipe", {}).get("pooling", POOL_ALL) for row in rows}
            if pooled - {self.encoder_pooling}:
                raise RecipeError(
                    f"the record pools {self.encoder_pooling!r}, its encoder runs {sorted(pooled)}"
                )
        runs = self.runs(repo)
        derived = derived_weights(runs)
        recorded = (self.cnn_weights, self.encoder_share, self.ensemble_weights)
        if derived != recorded:
            raise RecipeError(f"the record's runs give weights {derived}, it says {recorded}")
        temperatures = derived_temperatures(runs, self.ensemble_weights, self.adapted_rows(repo))
        if temperatures != (self.temperature, self.adapted_temperature):
            raise RecipeError(
                f"the record's runs give temperatures {temperatures}, it says "
                f"{(self.temperature, self.adapted_temperature)}"
            )
        return runs

    def adapted_rows(self, repo: Path = REPO) -> list[dict]:
        return self.adapted_runs.read(repo) if self.adapted_runs is not None else []

    def expected_metrics(self, repo: Path = REPO) -> dict:
        """The figures the bundle records as `expected_metrics`."""
        runs = self.verified(repo)
        estimate = expected_metrics(runs.cnn, self.ensemble_weights, runs.encoder)
        if self.adapted_runs is None:
            return estimate
        from research.robustness_figures import robustness_figures

        all_rows = self.encoder_runs.read(repo)
        return estimate | robustness_figures(
            all_rows, self.adapted_rows(repo), self.ensemble_weights, self.temperature
        )


@dataclass(frozen=True)
class FoldRuns:
    cnn: list[dict]  # research/report.py's runs, in the record's order
    encoder: dict[str, dict]  # encoder rows of the same protocol, keyed by run_key
    protocol: str = ""


def record(
    base: DefaultModelRecipe, results: Path = RESULTS, repo: Path = REPO
) -> DefaultModelRecipe:
    """`base` with the runs under `results` of its protocol, recipe, folds and seeds (whatever
    of them exist) and the weights they give."""
    paths = [
        results / run_file(f"{base.protocol}-fold{fold}", base.recipe, seed)
        for fold in base.folds
        for seed in base.seeds
    ]
    encoder_runs = repo / base.encoder_runs.path
    fields = base.model_dump() | {
        "cnn_runs": [RunFile.of(path, repo) for path in paths if path.exists()],
        # The files the record names, remade: their hashes follow the runs.
        "encoder_runs": RunFile.of(encoder_runs, repo),
        "adapted_runs": (
            RunFile.of(repo / base.adapted_runs.path, repo) if base.adapted_runs else None
        ),
    }
    unweighted = DefaultModelRecipe.model_validate(fields)
    cnn_weights, share, weights = derived_weights(unweighted.runs(repo))
    temperature, adapted_temperature = derived_temperatures(
        unweighted.runs(repo), weights, unweighted.adapted_rows(repo)
    )
    return DefaultModelRecipe.model_validate(
        fields
        | {
            "cnn_weights": cnn_weights,
            "encoder_share": share,
            "ensemble_weights": weights,
            "temperature": temperature,
            "adapted_temperature": adapted_temperature,
        }
    )


def derived_weights(runs: FoldRuns) -> tuple[dict[str, float], float, dict[str, float]]:
    """(the CNNs' weights, the encoder's share, the bundle's ensemble weights) the runs give."""
    cnn_weights = cross_validated_weights(runs.cnn)
    share = encoder_share(runs.encoder)
    if cnn_weights is None or share is None:
        raise RecipeError("the record's runs stored no validation outputs to choose weights on")
    return cnn_weights, share, with_encoder_share(cnn_weights, runs.encoder)


def cross_validated_weights(runs: list[dict]) -> dict[str, float] | None:
    """The CNNs' weights: the mean of the cnn2d weights the folds chose on their validation
    actors (never on their test actors). None when no fold stored its per-model outputs."""
    from ser_worker.evaluation.metrics import choose_cnn2d_weight

    chosen = [
        choose_cnn2d_weight(run["probabilities"]["val"]["labels"], run["probabilities"]["val"])
        for run in runs
        if "probabilities" in run
    ]
    if not chosen:
        return None
    cnn2d = round(statistics.mean(chosen), 1)
    return {CNN1D: round(1 - cnn2d, 1), CNN2D: cnn2d}


def encoder_share(encoder_runs: dict[str, dict]) -> float | None:
    """The mean of the encoder shares the folds chose on their validation actors."""
    shares = [row["encoder_share"] for row in encoder_runs.values() if "encoder_share" in row]
    return round(statistics.mean(shares), 1) if shares else None


def with_encoder_share(
    cnn_weights: dict[str, float] | None, encoder_runs: dict[str, dict]
) -> dict[str, float] | None:
    """The CNNs' weights scaled down to make room for the encoder's share."""
    share = encoder_share(encoder_runs)
    if cnn_weights is None or share is None:
        return cnn_weights
    return {ENCODER: share} | {
        model: round((1 - share) * weight, 2) for model, weight in cnn_weights.items()
    }


def derived_temperatures(
    runs: FoldRuns, weights: dict[str, float], adapted_rows: list[dict]
) -> tuple[float, float]:
    """(the ensemble's, the adapted encoder's) temperatures, each fitted on the validation
    actors of every run of the record's protocol together, with the bundle's weights."""
    from ser_worker.evaluation.calibration import fit_temperature
    from ser_worker.evaluation.ensemble import mix

    labels, mixed = [], []
    for run in runs.cnn:
        paired = (runs.encoder.get(run_key(run)) or {}).get("probabilities", {}).get("val")
        val = dict(run.get("probabilities", {}).get("val") or {})
        if not paired or not val or paired["labels"] != val["labels"]:
            continue
        val[ENCODER] = paired[ENCODER]
        labels += val["labels"]
        mixed.append(mix({k: np.asarray(v) for k, v in val.items() if k != "labels"}, weights))
    adapted_labels, adapted = [], []
    for row in adapted_rows:
        if row["protocol"] == runs.protocol:
            adapted_labels += row["probabilities"]["val"]["labels"]
            adapted.append(np.asarray(row["probabilities"]["val"][ENCODER]))
    return (
        round(fit_temperature(labels, np.concatenate(mixed)), 2) if mixed else 1.0,
        round(fit_temperature(adapted_labels, np.concatenate(adapted)), 2) if adapted else 1.0,
    )


def weighted_macro_f1(side_outputs: dict, weights: dict[str, float]) -> float:
    from ser_worker.evaluation.ensemble import mix
    from ser_worker.evaluation.metrics import argmax_macro_f1

    return argmax_macro_f1(side_outputs["labels"], mix(side_outputs, weights))


def expected_metrics(
    runs: list[dict], weights: dict[str, float] | None, encoder_runs: dict[str, dict] | None = None
) -> dict:
    """What to expect on unseen speakers: the folds' test figures, with the bundle's weights.

    Kept apart from the bundle's own `metrics` (it has no test side) and outside its version
    hash, because the folds are separate runs made with the same code and recipe. With
    `encoder_runs`, the ensemble is scored on the runs that both the CNNs and the encoder made.
    """
    encoder_runs = encoder_runs or {}
    if not runs:
        return {}
    estimate: dict = {
        "protocol": (
            f"{runs[0]['protocol']}: speaker-independent RAVDESS, folds of 4 unseen actors, "
            f"recipe {runs[0]['recipe']}, {len(runs)} runs (folds x seeds), docs/RESULTS.md"
        ),
        "runs": [run_key(run) for run in runs],
    }

    def summary(f1: list[float], accuracy: list[float] | None = None) -> dict:
        values = {"macro_f1": statistics.mean(f1), "runs": len(f1)}
        values["macro_f1_std"] = statistics.stdev(f1) if len(f1) > 1 else 0.0
        if accuracy:
            values["accuracy"] = statistics.mean(accuracy)
        return values

    for model in MODELS:
        estimate[model] = summary(
            [run["metrics"][model]["macro_f1"] for run in runs],
            [run["metrics"][model]["accuracy"] for run in runs],
        )
    if encoder_runs:
        estimate[ENCODER] = summary(
            [row[ENCODER]["macro_f1"] for row in encoder_runs.values()],
            [row[ENCODER]["accuracy"] for row in encoder_runs.values()],
        )
    if weights is not None:
        tests = []
        for run in runs:
            if "probabilities" not in run:
                continue
            test = dict(run["probabilities"]["test"])
            if ENCODER in weights:
                paired = encoder_runs.get(run_key(run))
                if paired is None or paired["probabilities"]["test"]["labels"] != test["labels"]:
                    continue
                test[ENCODER] = paired["probabilities"]["test"][ENCODER]
            tests.append(test)
        estimate[ENSEMBLE] = {
            **summary([weighted_macro_f1(test, weights) for test in tests]),
            "weights": weights,
        }
    return estimate


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "action",
        choices=("check", "record", "attach"),
        help="attach: write the record's expected figures into the shipped bundle (its version "
        "does not change)",
    )
    parser.add_argument("--record", type=Path, default=RECORD)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    try:
        recipe = DefaultModelRecipe.load(args.record)
        if args.action == "record":
            recipe = record(recipe, args.results)
            recipe.save(args.record)
        estimate = recipe.expected_metrics()
    except RecipeError as error:
        raise SystemExit(f"{args.record}: {error}") from None
    if args.action == "attach":
        from ser_worker.bundle.exports import with_expected_metrics

        shipped = REPO / "ser_worker" / "data" / "default_bundle.zip"
        shipped.write_bytes(with_expected_metrics(shipped.read_bytes(), estimate))
    print(f"{len(recipe.cnn_runs)} CNN runs; ensemble weights {recipe.ensemble_weights}")
    print(json.dumps({k: v for k, v in estimate.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
