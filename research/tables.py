"""`report.py render`: the tables and confusion plots of docs/RESULTS.md, from the run JSONs.

Pure functions of the runs' results (lists of dicts as research.runs writes them), so they can
be tested on made-up runs and rerun on whatever results exist.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from research.common import RESULTS, cell, fill_report
from research.protocols import MODELS, PROTOCOLS, RECIPES, REQUIRED_RECIPES
from ser_worker.labels import CNN2D, ENSEMBLE, MODEL_NAMES


def _chosen(results: list[dict], protocol: str, recipe: str) -> list[dict]:
    return [r for r in results if r["protocol"] == protocol and r["recipe"] == recipe]


def _groups(results: list[dict]):
    """(protocol, recipe, runs) in table order; required recipes even when nothing was run."""
    for protocol in PROTOCOLS:
        for recipe in RECIPES:
            chosen = _chosen(results, protocol, recipe)
            if chosen or recipe in REQUIRED_RECIPES:
                yield protocol, recipe, chosen


def _seed(run: dict) -> int:
    return run.get("seed", 0)


def summary_table(results: list[dict]) -> str:
    """Mean ± std over the runs (folds x seeds, directions) of each protocol, recipe and model."""
    lines = [
        "| protocol | recipe | model | accuracy | macro-F1 | runs |",
        "|---|---|---|---|---|---|",
    ]
    for protocol, recipe, chosen in _groups(results):
        for model in MODELS:
            accuracy = [r["metrics"][model]["accuracy"] for r in chosen]
            macro_f1 = [r["metrics"][model]["macro_f1"] for r in chosen]
            lines.append(
                f"| {protocol} | {recipe} | {model} | {cell(accuracy)} | "
                f"{cell(macro_f1)} | {len(chosen) if model == MODELS[0] else ''} |"
            )
    return "\n".join(lines)


def runs_table(results: list[dict]) -> str:
    """Every run on its own line: what the means above are made of, and what each one cost."""
    lines = [
        f"| run | recipe | seed | train / val / test clips | {' | '.join(MODELS)} | epochs "
        "1d/2d (best) | machine, training arithmetic | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(
        results,
        key=lambda r: (PROTOCOLS.index(r["protocol"]), r["experiment"], r["recipe"], _seed(r)),
    ):
        sizes = r["split"]["sizes"]
        epochs = "/".join(str(r["epochs_run"][m]) for m in MODEL_NAMES)
        best = r.get("best_epoch")
        if best:
            epochs += " (" + "/".join(str(best[m]) for m in MODEL_NAMES) + ")"
        f1 = " | ".join(f"{r['metrics'][m]['macro_f1']:.3f}" for m in MODELS)
        precision = r.get("precision", "float32")
        lines.append(
            f"| {r['experiment']} | {r['recipe']} | {_seed(r)} | {sizes['train']} / "
            f"{sizes['val']} / {sizes['test']} | {f1} | {epochs} | {r['machine']}, {precision} | "
            f"{r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def summed_confusions(results: list[dict]):
    """(protocol, recipe, model, runs, matrix, labels) for every group of runs that exists.

    The matrix sums the runs' test confusions: each test clip counts once per seed.
    """
    from ser_worker.evaluation.metrics import confusion_matrix

    for protocol, recipe, chosen in _groups(results):
        for model in MODELS if chosen else ():
            labels = chosen[0]["metrics"][model]["labels"]
            total = confusion_matrix([], [], labels)
            for r in chosen:
                total = total + r["metrics"][model]["confusion"]
            yield protocol, recipe, model, len(chosen), total.tolist(), labels


def confusion_table(results: list[dict]) -> str:
    from ser_worker.evaluation.metrics import most_confused

    lines = [
        "| protocol | recipe | model | test predictions | most-confused pairs (true→predicted: "
        "count, share of the true class) |",
        "|---|---|---|---|---|",
    ]
    for protocol, recipe, model, _runs, matrix, labels in summed_confusions(results):
        pairs = ", ".join(
            f"{p['true']}→{p['predicted']}: {p['count']} ({p['rate']:.0%})"
            for p in most_confused(matrix, labels)[:3]
        )
        n = sum(map(sum, matrix))
        lines.append(f"| {protocol} | {recipe} | {model} | {n} | {pairs} |")
    return "\n".join(lines)


def plot_confusions(results: list[dict], results_dir: Path = RESULTS) -> list[Path]:
    from ser_worker.evaluation.metrics import plot_confusion

    return [
        plot_confusion(
            matrix,
            labels,
            results_dir / f"confusion--{protocol}--{recipe}--{model}.png",
            title=f"{model}, {protocol}, recipe {recipe} ({runs} run{'s' * (runs != 1)})",
        )
        for protocol, recipe, model, runs, matrix, labels in summed_confusions(results)
    ]


def _by_fold_and_seed(results: list[dict], protocol: str, recipe: str) -> dict[tuple, dict]:
    """Runs keyed by (fold, seed): a fold of one seed holds the same test actors in every
    speaker-ravdess protocol, so runs can be paired across recipes and protocols."""
    return {
        (r["experiment"].rsplit("-", 1)[-1], _seed(r)): r
        for r in _chosen(results, protocol, recipe)
    }


def _paired_gain(
    results: list[dict], model: str, better: tuple[str, str], baseline: tuple[str, str]
) -> tuple[float, float, float, int] | None:
    """(mean of `better`, mean of `baseline`, mean paired gain, pairs) over shared folds x seeds."""
    ours, theirs = _by_fold_and_seed(results, *better), _by_fold_and_seed(results, *baseline)
    shared = sorted(set(ours) & set(theirs))
    if not shared:
        return None
    a = [ours[key]["metrics"][model]["macro_f1"] for key in shared]
    b = [theirs[key]["metrics"][model]["macro_f1"] for key in shared]
    return (
        statistics.mean(a),
        statistics.mean(b),
        statistics.mean(a) - statistics.mean(b),
        len(shared),
    )


def target_check(results: list[dict]) -> str:
    """The issue's targets under speaker-independent RAVDESS, as measured, pair by pair."""
    comparisons = (
        (("speaker-ravdess", "ours"), ("speaker-ravdess", "study")),
        (("speaker-ravdess-with-tess", "ours"), ("speaker-ravdess-with-tess", "study")),
        (("speaker-ravdess-with-tess", "ours"), ("speaker-ravdess", "study")),
    )
    lines = []
    for better, baseline in comparisons:
        ensemble = _paired_gain(results, ENSEMBLE, better, baseline)
        cnn2d = _paired_gain(results, CNN2D, better, baseline)
        if ensemble is None or cnn2d is None:
            continue
        mean, base, gain, pairs = ensemble
        lines.append(
            f"- {better[1]} on {better[0]} against {baseline[1]} on {baseline[0]}, {pairs} "
            f"paired runs (fold x seed): ensemble macro-F1 {mean:.3f} (target ≥ 0.75: "
            f"{'met' if mean >= 0.75 else 'not met'}) against {base:.3f}, {gain * 100:+.1f} "
            f"points (target ≥ +10: {'met' if gain >= 0.10 else 'not met'}); cnn2d alone "
            f"{cnn2d[2] * 100:+.1f} points."
        )
    if not lines:
        return "Targets: no speaker-ravdess folds run with both recipes yet."
    return "Targets under speaker-independent RAVDESS:\n\n" + "\n".join(lines)


def validation_table(results: list[dict]) -> str:
    """Per group: scores on the validation actors (what a recipe may be chosen by) and the
    ensemble with a cnn2d weight chosen there, against equal weights, on the test actors."""
    from ser_worker.evaluation.metrics import choose_cnn2d_weight, ensemble_macro_f1

    lines = [
        "| protocol | recipe | runs | validation: cnn2d | validation: ensemble | cnn2d weight "
        "chosen on validation | test: cnn2d | test: equal-weight ensemble | test: "
        "validation-weighted ensemble |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = 0
    for protocol, recipe, chosen in _groups(results):
        studied = [r["probabilities"] for r in chosen if "probabilities" in r]
        if not studied:
            continue
        rows += 1
        val_2d = [ensemble_macro_f1(p["val"]["labels"], p["val"], 1.0) for p in studied]
        val_ens = [ensemble_macro_f1(p["val"]["labels"], p["val"], 0.5) for p in studied]
        weights = [choose_cnn2d_weight(p["val"]["labels"], p["val"]) for p in studied]
        test = [
            [ensemble_macro_f1(p["test"]["labels"], p["test"], w) for p in studied]
            for w in (1.0, 0.5)
        ]
        weighted = [
            ensemble_macro_f1(p["test"]["labels"], p["test"], w)
            for p, w in zip(studied, weights, strict=True)
        ]
        cells = [cell(v) for v in (val_2d, val_ens, weights, *test, weighted)]
        lines.append(f"| {protocol} | {recipe} | {len(studied)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if rows else "No run stored its per-model outputs yet."


def render(_args: argparse.Namespace) -> None:
    results = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))]
    plot_confusions(results)
    fill_report(
        {
            "<!-- results-table -->": summary_table(results),
            "<!-- target-check -->": target_check(results),
            "<!-- runs-table -->": runs_table(results),
            "<!-- confusion-table -->": confusion_table(results),
            "<!-- validation-table -->": validation_table(results),
        }
    )
    print(summary_table(results))
    print(target_check(results))
