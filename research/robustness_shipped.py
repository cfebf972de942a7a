"""The shipped bundle itself under the report's conditions, through Bundle.predict: how often each
member's answer stays the clean clip's. Its training data are these clips, so this measures
stability, not accuracy (research.robustness)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from research.common import RESULTS
from research.robustness_bank import CONDITIONS, clip_rng, corpora

log = logging.getLogger("robustness")
OUT = RESULTS / "robustness" / "shipped_stability.json"


def _answers(bundle, clips, decoded, probabilities: dict | None = None):
    """Each member's label for every clip under every condition of CONDITIONS (and, into
    `probabilities` when given, its probabilities: one array per condition and member)."""
    from ser_worker.labels import SAMPLE_RATE

    labels: dict[str, dict[str, np.ndarray]] = {}
    for condition, change in CONDITIONS.items():
        started = time.perf_counter()
        signals = [
            change(y, clip_rng(clip.path, condition))
            for clip, y in zip(clips, decoded, strict=True)
        ]
        answers = bundle.predict(signals, SAMPLE_RATE)
        labels[condition] = {
            model: np.array([answer[model].emotion for answer in answers]) for model in answers[0]
        }
        if probabilities is not None:
            for model in answers[0]:
                probabilities[f"{condition}/{model}"] = np.array(
                    [[answer[model].probabilities[e] for e in bundle.labels] for answer in answers],
                    np.float32,
                )
        log.info("%s: %d clips in %.0f s", condition, len(clips), time.perf_counter() - started)
    return labels


def _each_changed(labels: dict[str, dict[str, np.ndarray]], score) -> dict[str, dict]:
    """score(clean, found) of every member's labels under every condition but clean."""
    return {
        condition: {
            model: score(labels["clean"][model], found) for model, found in by_model.items()
        }
        for condition, by_model in labels.items()
        if condition != "clean"
    }


def _unchanged(labels: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    return _each_changed(labels, lambda clean, found: float(np.mean(found == clean)))


def shipped_stability(data: Path, every: int, bundle_path: Path | None = None) -> dict:
    from ser_worker.audio import load_audio
    from ser_worker.bundle import load_bundle
    from ser_worker.bundle.archive import shipped_bundle_bytes

    bundle = load_bundle(bundle_path or shipped_bundle_bytes())
    clips = [clip for corpus in corpora(data) for clip in corpus][::every]
    decoded = [load_audio(clip.path, trim=False) for clip in clips]
    result = {
        "bundle": bundle.version,
        "clips": len(clips),
        "every": every,
        "unchanged": _unchanged(_answers(bundle, clips, decoded)),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    return result


def _macro_f1(truth: np.ndarray, found: np.ndarray, n: int) -> float:
    """Macro-F1 of class indices over the classes that occur in either (as evaluate() counts)."""
    matrix = np.bincount(truth * n + found, minlength=n * n).reshape(n, n)
    hits = np.diag(matrix)
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    present = (support + predicted) > 0
    return float(np.mean(2 * hits[present] / (support + predicted)[present]))


def change_interval(
    truth: list[str], clean: np.ndarray, changed: np.ndarray, resamples: int = 2000
) -> list[float]:
    """95% interval of macro-F1(changed) - macro-F1(clean) over clips drawn with replacement,
    the same clips for both (a paired bootstrap): how far one split's change can be trusted."""
    from ser_worker.labels import EMOTIONS

    index = {label: i for i, label in enumerate(EMOTIONS)}
    t, a, b = (np.array([index[x] for x in labels]) for labels in (truth, clean, changed))
    rng = np.random.default_rng(0)
    draws = rng.integers(0, len(t), size=(resamples, len(t)))
    changes = [
        _macro_f1(t[d], b[d], len(EMOTIONS)) - _macro_f1(t[d], a[d], len(EMOTIONS)) for d in draws
    ]
    return [float(x) for x in np.quantile(changes, [0.025, 0.975])]


def heldout_robustness(
    data: Path,
    bundle_path: Path,
    groups: dict[str, frozenset[str]],
    probabilities_out: Path | None = None,
) -> dict:
    """A fold bundle (research.train_default_model --hold-out) on the speakers it never heard,
    every member and the ensemble as shipped, under every condition: macro-F1 per group of
    speakers (and over all of them) and the share of labels that stay the clean clip's. Unlike
    the shipped bundle's stability this is accuracy, on one split."""
    from ser_worker.audio import load_audio
    from ser_worker.bundle import load_bundle
    from ser_worker.evaluation.metrics import evaluate

    bundle = load_bundle(bundle_path)
    heard = set(bundle.manifest.split.get("train_speakers", ())) & set().union(*groups.values())
    if heard:
        raise ValueError(f"the bundle was trained on {sorted(heard)}")
    every = frozenset().union(*groups.values())
    clips = [clip for corpus in corpora(data) for clip in corpus if clip.speaker in every]
    decoded = [load_audio(clip.path, trim=False) for clip in clips]
    probabilities: dict[str, np.ndarray] = {}
    labels = _answers(bundle, clips, decoded, probabilities)
    if probabilities_out:
        speakers = np.array([clip.speaker for clip in clips])
        truth = np.array([clip.emotion for clip in clips])
        np.savez(probabilities_out, speaker=speakers, truth=truth, **probabilities)
    result: dict = {"bundle": bundle.version, "groups": {}}
    for name, speakers in {**groups, "all held-out": every}.items():
        keep = np.array([clip.speaker in speakers for clip in clips])
        truth = [clip.emotion for clip, kept in zip(clips, keep, strict=True) if kept]
        mine = {
            condition: {model: found[keep] for model, found in by_model.items()}
            for condition, by_model in labels.items()
        }
        result["groups"][name] = {
            "speakers": sorted(speakers),
            "clips": len(truth),
            "macro_f1": {
                condition: {
                    model: evaluate(truth, list(found))["macro_f1"]
                    for model, found in by_model.items()
                }
                for condition, by_model in mine.items()
            },
            "unchanged": _unchanged(mine),
            "change_ci95": _each_changed(
                mine, lambda clean, found, truth=truth: change_interval(truth, clean, found)
            ),
        }
    out = RESULTS / "robustness" / f"heldout--{bundle.version}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def heldout_table(result: dict) -> str:
    lines = []
    for name, group in result["groups"].items():
        models = list(group["macro_f1"]["clean"])
        clean = group["macro_f1"]["clean"]
        lines += [
            f"{name} ({', '.join(group['speakers'])}; {group['clips']} clips), fold bundle "
            f"{result['bundle']}: macro-F1 (change from clean; its 95% interval over the clips) · "
            "labels unchanged",
            "",
            "| condition | " + " | ".join(models) + " |",
            "|---|" + "---|" * len(models),
        ]
        for condition, by_model in group["macro_f1"].items():
            cells = []
            for m in models:
                cell = f"{by_model[m]:.3f}"
                if condition != "clean":
                    change = by_model[m] - clean[m]
                    low, high = group["change_ci95"][condition][m]
                    unchanged = group["unchanged"][condition][m]
                    cell += f" ({change:+.3f}; {low:+.2f} to {high:+.2f}) · {unchanged:.0%}"
                cells.append(cell)
            lines.append(f"| {condition} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def stability_table(result: dict) -> str:
    models = list(next(iter(result["unchanged"].values())))
    lines = [
        f"**The shipped bundle ({result['bundle']}) itself**, through `Bundle.predict`, on "
        f"{result['clips']} clips (every {result['every']}th of RAVDESS and TESS, all in its "
        "training data: this is how often each answer stays the clean clip's, not accuracy):",
        "",
        "| condition | " + " | ".join(models) + " |",
        "|---|" + "---|" * len(models),
    ]
    for condition, by_model in result["unchanged"].items():
        lines.append(f"| {condition} | " + " | ".join(f"{by_model[m]:.1%}" for m in models) + " |")
    return "\n".join(lines)


def heldout_figure(results: list[dict], out: Path, group: str = "all held-out") -> Path:
    """Each member's and the ensemble's macro-F1 per condition on fold bundles' held-out actors:
    one line per model (the mean over the folds), the folds themselves as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ser_worker.labels import ENSEMBLE

    conditions = list(results[0]["groups"][group]["macro_f1"])
    models = list(results[0]["groups"][group]["macro_f1"]["clean"])
    x = np.arange(len(conditions))
    fig, ax = plt.subplots(figsize=(10, 4.5), constrained_layout=True)
    for i, model in enumerate(models):
        folds = np.array(
            [[r["groups"][group]["macro_f1"][c][model] for c in conditions] for r in results]
        )
        color = f"C{i}"
        width = 2.5 if model == ENSEMBLE else 1.5
        ax.plot(x, folds.mean(axis=0), "-o", color=color, label=model, lw=width)
        for fold in folds:
            ax.plot(x, fold, ".", color=color, alpha=0.5)
    ax.set_xticks(x, conditions, rotation=30, ha="right")
    ax.set_ylabel("macro-F1 (chance 0.17)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    clips = sum(r["groups"][group]["clips"] for r in results)
    ax.set_title(
        f"Fold bundles on their held-out RAVDESS actors ({len(results)} "
        f"fold{'s' if len(results) > 1 else ''}, {clips} clips): "
        "lines the mean, dots each fold"
    )
    ax.legend(loc="lower left")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
