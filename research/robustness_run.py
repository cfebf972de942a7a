"""The robustness report's runs: the encoder's head fitted per split under each recipe, scored
under every condition of the bank (research.robustness_bank), with calibration, and the ensemble
with the CNN fold runs where their outputs are valid (see `ensemble_conditions`)."""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from research.common import RESULTS, cell, fill_report, run_file
from research.default_model import DefaultModelRecipe
from research.protocols import FOLDS, experiments
from research.robustness_bank import CONDITIONS, RAW_CONDITIONS, as_pooled, bank_name, corpora
from ser_worker.evaluation.calibration import (
    expected_calibration_error,
    fit_temperature,
    temperature_scaled,
)
from ser_worker.evaluation.ensemble import mix
from ser_worker.evaluation.metrics import argmax_macro_f1, choose_share
from ser_worker.labels import CNN2D, EMOTIONS, ENCODER, ENSEMBLE, POOL_ALL, POOL_ALL_SOFT
from ser_worker.models.encoder.head import HEAD_STRENGTH, LinearHead, standardised_by_group

log = logging.getLogger("robustness")
OUT = RESULTS / "robustness"
MARKER = "<!-- robustness-table -->"
SEEDS = (0, 1, 2, 3, 4)
PROTOCOLS = {"speaker-ravdess-with-tess": SEEDS, "cross-corpus": (0,)}
TESS_EVERY = 2  # as the CNN runs and the encoder report


@dataclass(frozen=True)
class Recipe:
    """How the encoder's head is trained and read."""

    preprocessing: str  # a bank preprocessing: "raw" or "level"
    copies: int  # channel-augmented training copies per training clip (bank copy0, copy1, ...)
    adapt: bool = False  # test-time standardisation: vectors standardised by their own set
    pooling: str = POOL_ALL  # how the vectors pool the encoder's frames (models.encoder.pooling)

    @property
    def conditions(self) -> tuple[str, ...]:
        return tuple(CONDITIONS) if self.preprocessing == "level" else RAW_CONDITIONS


RECIPES = {
    "shipped (as decoded)": Recipe("raw", 0),
    "level": Recipe("level", 0),
    "level + channel copies": Recipe("level", 2),
    "level + channel + test-time standardisation": Recipe("level", 2, adapt=True),
    "level + channel + speech pooling": Recipe("level", 2, pooling=POOL_ALL_SOFT),
    "level + channel + test-time standardisation + speech pooling": Recipe(
        "level", 2, adapt=True, pooling=POOL_ALL_SOFT
    ),
}
# The conditions under which the CNN fold runs' clean outputs still hold: cnn2d reads dB relative
# to each clip's maximum and trims relative to its peak, so a gain changes none of its inputs
# (checked on the bank: `cnn2d_level_invariance`). The CNN fold models themselves were not kept,
# so under noise, codecs and rooms the ensemble is not measured.
ENSEMBLE_CNN2D = "encoder+cnn2d"
GAIN_CONDITIONS = ("clean", "gain-20dB", "gain+10dB-guarded", "peak-normalised")


def recipe_file(recipe_name: str) -> str:
    """research/results/robustness/<slug>.json of one recipe's rows."""
    slug = "-".join("".join(c if c.isalnum() else " " for c in recipe_name).split())
    return f"runs--{slug}.json"


class Bank:
    def __init__(self, root: Path, paths: list[str]) -> None:
        self.root, self.paths = root, paths

    @cache  # noqa: B019 - one bank per run, kept for its lifetime
    def load(self, preprocessing: str, condition: str) -> dict[str, np.ndarray]:
        stored = np.load(self.root / f"{bank_name(preprocessing, condition)}.npz")
        if list(stored["paths"]) != self.paths:
            raise SystemExit(f"{self.root}: the bank's clips are not the corpora's; embed again")
        return {key: stored[key] for key in ("vectors", "cnn1d", "cnn2d")}

    def vectors(self, preprocessing: str, condition: str, pooling: str) -> np.ndarray:
        return as_pooled(self.load(preprocessing, condition)["vectors"], pooling)

    def head(self, recipe: Recipe, experiment: str, seed: int, fit) -> LinearHead:
        """The head of a recipe's split, fitted once and kept beside the bank (a fit takes
        seconds to a minute; every condition of a run reads the same head)."""
        made = [
            (self.root / f"{bank_name(recipe.preprocessing, c)}.npz").stat().st_mtime_ns
            for c in ["clean", *(f"copy{k}" for k in range(recipe.copies))]
        ]  # a bank embedded again makes new heads
        key = hashlib.sha256(
            json.dumps([recipe.__dict__, experiment, seed, HEAD_STRENGTH, made]).encode()
        ).hexdigest()[:16]
        path = self.root / "heads" / f"{key}.npz"
        if path.exists():
            return LinearHead.from_bytes(path.read_bytes())
        head = fit()
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(head.to_bytes())
        return head


def one_run(
    bank: Bank,
    recipe: Recipe,
    protocol: str,
    name: str,
    seed: int,
    clips,
    split,
    *,
    clean_only: bool = False,
):
    from ser_worker.evaluation.metrics import evaluate
    from ser_worker.models.encoder import fit_adapted_head, fit_linear_head

    labels = [clip.emotion for clip in clips]
    train, val, test = (list(part) for part in (split.train, split.val, split.test))
    clean = bank.vectors(recipe.preprocessing, "clean", recipe.pooling)
    train_rows = [clean[train]] + [
        bank.vectors(recipe.preprocessing, f"copy{k}", recipe.pooling)[train]
        for k in range(recipe.copies)
    ]
    train_x = np.concatenate(train_rows)
    train_y = [labels[i] for i in train] * (1 + recipe.copies)

    def read(x: np.ndarray, indices: list[int], condition_group: str) -> np.ndarray:
        if not recipe.adapt:
            return x
        return standardised_by_group(x, [f"{clips[i].corpus}:{condition_group}" for i in indices])

    def fit() -> LinearHead:
        if recipe.adapt:
            # As the bundle's adapted head: per corpus and per copy, each standardised alone.
            groups = [f"{clips[i].corpus}:{k}" for k in range(1 + recipe.copies) for i in train]
            return fit_adapted_head(train_x, train_y, groups, EMOTIONS, strength=HEAD_STRENGTH)
        return fit_linear_head(train_x, train_y, EMOTIONS, strength=HEAD_STRENGTH)

    head = bank.head(recipe, name, seed, fit)
    truth = {"val": [labels[i] for i in val], "test": [labels[i] for i in test]}
    val_p = head.probabilities(read(clean[val], val, "clean"))
    row = {
        "recipe": recipe.__dict__,
        "protocol": protocol,
        "experiment": name,
        "seed": seed,
        "test_clips": len(test),
        "temperature": fit_temperature(truth["val"], val_p),
        "conditions": {},
    }
    cnn = cnn_fold_run(name, seed, truth)
    mixes = {}
    if cnn:
        # Two ensembles, each member's share chosen on the validation actors: with cnn2d alone
        # (whose fold outputs hold for any gain) and with both CNNs at the record's ratio (the
        # rule of the bundles before #14; cnn1d's fold models read clips as decoded).
        for key, cnn_part in (("cnn2d", cnn["val_cnn2d"]), ("cnns", cnn["val_cnns"])):
            share = choose_share(truth["val"], val_p, cnn_part)
            mixed_val = share * val_p + (1 - share) * cnn_part
            mixes[key] = (share, fit_temperature(truth["val"], mixed_val))
        row["encoder_share"] = mixes["cnns"][0]
        row["encoder_share_cnn2d"] = mixes["cnn2d"][0]
        row["ensemble_temperature"] = mixes["cnns"][1]
        row["ensemble_cnn2d_temperature"] = mixes["cnn2d"][1]
    clean_labels: dict[str, np.ndarray] = {}
    clean_outputs: dict[str, np.ndarray] = {}
    for condition in ("clean",) if clean_only else recipe.conditions:
        p = head.probabilities(
            read(
                bank.vectors(recipe.preprocessing, condition, recipe.pooling)[test], test, condition
            )
        )
        result = {
            ENCODER: member_scores(truth["test"], p, row["temperature"], clean_labels.get(ENCODER))
        }
        clean_labels.setdefault(ENCODER, p.argmax(axis=1))
        for key, model in (("cnn2d", ENSEMBLE_CNN2D), ("cnns", ENSEMBLE)):
            if key not in mixes or (key == "cnns" and condition != "clean"):
                continue
            if condition not in GAIN_CONDITIONS:
                continue
            share, temperature = mixes[key]
            mixed = share * p + (1 - share) * cnn[f"test_{key}"]
            result[model] = member_scores(
                truth["test"], mixed, temperature, clean_labels.get(model)
            )
            clean_labels.setdefault(model, mixed.argmax(axis=1))
            clean_outputs.setdefault(model, mixed)
        row["conditions"][condition] = result
        if condition == "clean":
            encoder = evaluate(truth["test"], [EMOTIONS[i] for i in p.argmax(axis=1)])
            row[ENCODER] = {k: encoder[k] for k in ("accuracy", "macro_f1", "confusion")}
            row["probabilities"] = {
                part: {"labels": truth[part], ENCODER: _rounded(q)}
                for part, q in (("val", val_p), ("test", p))
            }
            row["probabilities"]["test"] |= {
                model: _rounded(q) for model, q in clean_outputs.items()
            }
    return row


def _rounded(p: np.ndarray) -> list:
    # Rounded like the CNN runs' outputs, so ensembles can be studied without refitting.
    return np.round(np.asarray(p, dtype=np.float64), 4).tolist()


def member_scores(truth, p, temperature, clean_labels) -> dict:
    calibrated = temperature_scaled(p, temperature)
    scores = {
        "macro_f1": argmax_macro_f1(truth, p),
        "ece": expected_calibration_error(truth, p),
        "ece_calibrated": expected_calibration_error(truth, calibrated),
        "uncertain_share": float(np.mean(calibrated.max(axis=1) < 0.5)),
    }
    if clean_labels is not None:
        scores["unchanged"] = float(np.mean(p.argmax(axis=1) == clean_labels))
    return scores


def cnn_fold_run(name: str, seed: int, truth: dict) -> dict | None:
    """The CNN fold run of this split (recipe ours), if it stored its outputs: cnn2d's, and the
    two CNNs mixed with the shipped record's CNN weights, on the validation and test sides."""
    path = RESULTS / run_file(name, "ours", seed)
    if not path.exists():
        return None
    run = json.loads(path.read_text())
    outputs = run.get("probabilities")
    if not outputs or any(outputs[part]["labels"] != truth[part] for part in truth):
        return None
    weights = DefaultModelRecipe.load().cnn_weights
    found = {}
    for part in truth:
        found[f"{part}_cnn2d"] = np.asarray(outputs[part][CNN2D])
        found[f"{part}_cnns"] = mix({k: np.asarray(outputs[part][k]) for k in weights}, weights)
    return found


def cnn2d_level_invariance(bank: Bank) -> float:
    """The largest change of the shipped cnn2d's outputs between the clips as decoded and the
    same clips loudness-normalised (both in the bank)."""
    return float(
        np.max(np.abs(bank.load("raw", "clean")["cnn2d"] - bank.load("level", "clean")["cnn2d"]))
    )


def run(
    data: Path,
    bank_root: Path,
    write: bool = True,
    clean_only: bool = False,
    recipes: list[str] | None = None,
) -> list[dict]:
    """Every recipe's runs, or only `recipes`' (the others' rows are read from their files)."""
    ravdess, tess = corpora(data)
    bank = Bank(bank_root, [str(clip.path) for clip in ravdess + tess])
    unknown = set(recipes or ()) - set(RECIPES)
    if unknown:
        raise SystemExit(f"no recipe {sorted(unknown)}; the recipes are {list(RECIPES)}")
    chosen = {name: RECIPES[name] for name in recipes or RECIPES}
    rows = []
    # The recipes a bundle can ship first: a quick look (--clean-only) sees them soonest.
    for recipe_name, recipe in sorted(chosen.items(), key=lambda kv: -kv[1].copies):
        for protocol, seeds in PROTOCOLS.items():
            for seed in seeds:
                for name, clips, split in experiments(
                    protocol, ravdess, tess, FOLDS, seed, TESS_EVERY
                ):
                    if len(clips) != len(bank.paths):
                        raise SystemExit(f"{name}: expected every clip of both corpora")
                    row = one_run(
                        bank, recipe, protocol, name, seed, clips, split, clean_only=clean_only
                    )
                    rows.append({"name": recipe_name, **row})
                    log.info(
                        "%s | %s seed %d: clean %.3f",
                        recipe_name,
                        name,
                        seed,
                        row["conditions"]["clean"][ENCODER]["macro_f1"],
                    )
    OUT.mkdir(parents=True, exist_ok=True)
    for recipe_name in chosen:
        # One file per recipe, rows shaped like research/encoder_report's: the default model's
        # record can take a recipe's runs as its encoder runs (research.default_model).
        made = [row for row in rows if row["name"] == recipe_name]
        (OUT / recipe_file(recipe_name)).write_text(json.dumps(made, separators=(",", ":")) + "\n")
    for recipe_name in RECIPES.keys() - chosen.keys():
        if (OUT / recipe_file(recipe_name)).exists():
            rows += json.loads((OUT / recipe_file(recipe_name)).read_text())
    if clean_only:
        print(report(rows, float("nan"), bank))
        return rows
    stored = OUT / "cnn2d_level_invariance.json"
    if (bank_root / f"{bank_name('raw', 'clean')}.npz").exists():
        stored.write_text(json.dumps(cnn2d_level_invariance(bank)) + "\n")
    invariance = json.loads(stored.read_text())
    table = report(rows, invariance, bank)
    print(table)
    if write:
        plot(rows, OUT / "robustness.png")
        fill_report({MARKER: table})
    return rows


def _values(rows, recipe, protocol, condition, model, key, experiment=None) -> list[float]:
    return [
        row["conditions"][condition][model][key]
        for row in rows
        if row["name"] == recipe
        and row["protocol"] == protocol
        and (experiment is None or row["experiment"] == experiment)
        and condition in row["conditions"]
        and model in row["conditions"][condition]
        and key in row["conditions"][condition][model]
    ]


def _mean(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f}" if values else "—"


TEMPERATURE_OF = {
    ENCODER: "temperature",
    ENSEMBLE_CNN2D: "ensemble_cnn2d_temperature",
    ENSEMBLE: "ensemble_temperature",
}


def pooled_ece(rows: list[dict], model: str) -> tuple[float, float, float] | None:
    """(ECE before, ECE after temperature scaling, share under 0.5 after) over the clean test
    clips of all `rows` together: one run's 176 clips in 15 bins measure sampling noise as much
    as calibration (about 0.05 for a perfectly calibrated model)."""
    labels, raw, scaled = [], [], []
    for row in rows:
        test = row.get("probabilities", {}).get("test", {})
        if model not in test or row.get(TEMPERATURE_OF[model]) is None:
            continue
        p = np.asarray(test[model])
        labels += test["labels"]
        raw.append(p)
        scaled.append(temperature_scaled(p, row[TEMPERATURE_OF[model]]))
    if not raw:
        return None
    raw, scaled = np.concatenate(raw), np.concatenate(scaled)
    return (
        expected_calibration_error(labels, raw),
        expected_calibration_error(labels, scaled),
        float(np.mean(scaled.max(axis=1) < 0.5)),
    )


def _select(rows, recipe, protocol, experiment=None) -> list[dict]:
    return [
        r
        for r in rows
        if r["name"] == recipe
        and r["protocol"] == protocol
        and (experiment is None or r["experiment"] == experiment)
    ]


def report(rows: list[dict], invariance: float, bank: Bank) -> str:
    speaker = "speaker-ravdess-with-tess"
    recipes = list(RECIPES)
    directions = ("cross-ravdess-to-tess", "cross-tess-to-ravdess")
    lines = [
        "**The speech encoder under each condition.** Macro-F1 on unseen RAVDESS actors "
        "(speaker-ravdess-with-tess: 5 folds x 5 seeds, mean ± std) and across corpora (RAVDESS → "
        "TESS / TESS → RAVDESS, one run each; the TESS training sides hold every second clip); "
        "*unchanged*: the share of test clips whose predicted class is the one predicted for the "
        "clean clip; `—`: not measured under that recipe's preprocessing.",
        "",
        "| condition | " + " | ".join(recipes) + " |",
        "|---|" + "---|" * len(recipes),
    ]
    for condition in CONDITIONS:
        cells = []
        for recipe in recipes:
            f1 = _values(rows, recipe, speaker, condition, ENCODER, "macro_f1")
            if not f1:
                cells.append("—")
                continue
            cross = [
                _mean(_values(rows, recipe, "cross-corpus", condition, ENCODER, "macro_f1", e))
                for e in directions
            ]
            kept = _values(rows, recipe, speaker, condition, ENCODER, "unchanged")
            cells.append(
                f"{statistics.mean(f1):.3f} ± {statistics.stdev(f1):.3f}; across "
                f"{cross[0]} / {cross[1]}"
                + (f"; unchanged {statistics.mean(kept):.1%}" if kept else "")
            )
        lines.append(f"| {condition} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "**Ensembles and calibration, clean clips.** The encoder's share of each ensemble is "
        "chosen per run on its validation actors (as the shipped weights are); *encoder + "
        "cnn2d* mixes in the CNN fold runs' cnn2d, *encoder + CNNs* both fold CNNs at the "
        "record's 0.6 / 0.4 (their cnn1d read clips as decoded). ECE: expected calibration "
        "error (15 bins) over the test clips of all 25 runs together, before → after "
        "temperature scaling fitted on each run's validation actors; *uncertain*: share of "
        "test clips whose calibrated best class holds under 0.5.",
        "",
        "| recipe | model | unseen actors: macro-F1 | ECE before → after | uncertain | "
        "RAVDESS → TESS | TESS → RAVDESS |",
        "|---|---|---|---|---|---|---|",
    ]
    for recipe in recipes:
        for model in (ENCODER, ENSEMBLE_CNN2D, ENSEMBLE):
            f1 = _values(rows, recipe, speaker, "clean", model, "macro_f1")
            if not f1:
                continue
            ece = pooled_ece(_select(rows, recipe, speaker), model)
            cross = [
                _mean(_values(rows, recipe, "cross-corpus", "clean", model, "macro_f1", e))
                for e in directions
            ]
            lines.append(
                f"| {recipe} | {model} | {cell(f1)} | "
                + (f"{ece[0]:.3f} → {ece[1]:.3f} | {ece[2]:.1%}" if ece else "— | —")
                + f" | {cross[0]} | {cross[1]} |"
            )
    lines += [
        "",
        "**Gains.** Share of test clips (unseen actors) whose label stays the clean clip's, and "
        "the largest change of the mean macro-F1, under −20 dB, +10 dB (kept under full "
        "scale) and peak normalisation. cnn2d reads decibels relative to each clip's maximum "
        "and trims relative to its peak, so no gain changes its input: its fold outputs hold "
        "under every gain (the shipped cnn2d's outputs on clips as decoded and loudness-"
        f"normalised differ by at most {invariance:.1e} over all {len(bank.paths)} clips).",
        "",
        "| recipe | model | labels unchanged (lowest of the gains) | largest macro-F1 change |",
        "|---|---|---|---|",
    ]
    for recipe in recipes:
        for model in (ENCODER, ENSEMBLE_CNN2D):
            clean = _values(rows, recipe, speaker, "clean", model, "macro_f1")
            gains = [c for c in GAIN_CONDITIONS[1:] if c in RECIPES[recipe].conditions]
            kept = [_values(rows, recipe, speaker, c, model, "unchanged") for c in gains]
            if not clean or not all(kept):
                continue
            change = max(
                abs(
                    statistics.mean(_values(rows, recipe, speaker, c, model, "macro_f1"))
                    - statistics.mean(clean)
                )
                for c in gains
            )
            lines.append(
                f"| {recipe} | {model} | {min(statistics.mean(k) for k in kept):.2%} "
                f"({', '.join(gains)}) | {change:.4f} |"
            )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Encoder macro-F1 per condition and recipe on the speaker folds, and across corpora."""
    from ser_worker.evaluation.metrics import _new_figure, _save

    fig = _new_figure(figsize=(11, 6.2))
    axes = fig.subplots(1, 2, sharey=True)
    conditions = list(CONDITIONS)
    width = 0.8 / len(RECIPES)
    for k, recipe in enumerate(RECIPES):
        for ax, protocol in zip(axes, ("speaker-ravdess-with-tess", "cross-corpus"), strict=True):
            means = [
                statistics.mean(v)
                if (v := _values(rows, recipe, protocol, c, ENCODER, "macro_f1"))
                else np.nan
                for c in conditions
            ]
            ax.barh(np.arange(len(conditions)) + k * width, means, height=width, label=recipe)
    for ax, title in zip(
        axes,
        ("unseen RAVDESS actors (25 runs)", "across corpora (mean of both directions)"),
        strict=True,
    ):
        ax.set_title(title)
        ax.set_xlabel("encoder macro-F1")
        ax.set_xlim(0, 1)
        ax.axvline(1 / len(EMOTIONS), color="grey", linestyle=":", linewidth=1)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(np.arange(len(conditions)) + 0.4 - width / 2, conditions)
    axes[0].invert_yaxis()
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=2, fontsize=9, frameon=False)
    fig.subplots_adjust(left=0.16, right=0.98, bottom=0.2, top=0.88, wspace=0.08)
    fig.suptitle("How the recording changes the speech encoder's answers (chance 0.17, dotted)")
    _save(fig, path)
