"""What the default bundle records of the robustness runs (research.robustness) as expected
figures: calibration of its ensemble, its members across corpora, with and without per-submission
adaptation, and the encoder under each recording condition."""

from __future__ import annotations

import json
import statistics

import numpy as np

from research.common import RESULTS, run_file
from ser_worker.evaluation.calibration import expected_calibration_error, temperature_scaled
from ser_worker.evaluation.ensemble import mix
from ser_worker.evaluation.metrics import argmax_macro_f1
from ser_worker.labels import ENCODER, ENSEMBLE

DIRECTIONS = {
    "cross-ravdess-to-tess": "ravdess_to_tess",
    "cross-tess-to-ravdess": "tess_to_ravdess",
}


def _with_cnns(row: dict, cnn_run: dict | None, weights: dict[str, float]) -> np.ndarray | None:
    """The bundle's ensemble on a row's test clips, from the CNN run of the same split."""
    if cnn_run is None or "probabilities" not in cnn_run:
        return None
    test = cnn_run["probabilities"]["test"]
    if test["labels"] != row["probabilities"]["test"]["labels"]:
        return None
    outputs = {k: np.asarray(v) for k, v in test.items() if k != "labels"}
    outputs[ENCODER] = np.asarray(row["probabilities"]["test"][ENCODER])
    return mix(outputs, weights)


def _cnn_run(experiment: str, seed: int) -> dict | None:
    path = RESULTS / run_file(experiment, "ours", seed)
    return json.loads(path.read_text()) if path.exists() else None


def robustness_figures(
    rows: list[dict],
    adapted_rows: list[dict],
    weights: dict[str, float],
    temperature: float,
    protocol: str = "speaker-ravdess-with-tess",
) -> dict:
    figures: dict = {}
    labels, raw = [], []
    for row in rows:
        if row["protocol"] != protocol:
            continue
        mixed = _with_cnns(row, _cnn_run(row["experiment"], row["seed"]), weights)
        if mixed is not None:
            labels += row["probabilities"]["test"]["labels"]
            raw.append(mixed)
    if raw:
        p = np.concatenate(raw)
        figures["calibration"] = {
            "protocol": f"{protocol}: the test actors of {len(raw)} runs together, 15 bins",
            "temperature": temperature,
            "ece_before": expected_calibration_error(labels, p),
            "ece_after": expected_calibration_error(labels, temperature_scaled(p, temperature)),
        }
    cross: dict = {
        "protocol": (
            "cross-corpus: trained on one corpus (RAVDESS actors 01-20 or TESS), tested on all "
            "of the other; the adapted figures standardise each test corpus by itself"
        )
    }
    for row in rows:
        if row["experiment"] in DIRECTIONS:
            key = DIRECTIONS[row["experiment"]]
            truth = row["probabilities"]["test"]["labels"]
            cross.setdefault(ENCODER, {})[key] = row[ENCODER]["macro_f1"]
            mixed = _with_cnns(row, _cnn_run(row["experiment"], row["seed"]), weights)
            if mixed is not None:
                cross.setdefault(ENSEMBLE, {})[key] = argmax_macro_f1(truth, mixed)
    for row in adapted_rows:
        if row["experiment"] in DIRECTIONS:
            cross.setdefault("adapted", {})[DIRECTIONS[row["experiment"]]] = row[ENCODER][
                "macro_f1"
            ]
    if len(cross) > 1:
        figures["cross_corpus"] = cross
    conditions = {}
    for condition in rows[0]["conditions"] if rows else ():
        f1 = [
            row["conditions"][condition][ENCODER]["macro_f1"]
            for row in rows
            if row["protocol"] == protocol and condition in row["conditions"]
        ]
        if f1:
            conditions[condition] = statistics.mean(f1)
    if conditions:
        figures["conditions"] = {
            "protocol": f"{protocol}, the speech encoder alone (docs/RESULTS.md)",
            ENCODER: conditions,
        }
    return figures
