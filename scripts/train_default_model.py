"""Train the default bundle shipped in the package on every clip of the data folder.

    python scripts/report.py run --protocol speaker-ravdess     # first: the 5 folds
    python scripts/train_default_model.py --data ../shared/data --precision mixed_bfloat16

Trains both CNNs on every RAVDESS (actors 01-20) and TESS clip of the six classes with the
project's training recipe and writes:
  ser_worker/data/default_bundle.zip   the bundle `ser-cli` installs on first use
  docs/default_model.json              its training data, recipe, timings and training curves
  docs/default_model_history_*.png     the training curves

No clip is held out, so this run measures nothing about unseen speakers: that estimate comes
from the speaker-independent RAVDESS folds of docs/RESULTS.md (`scripts/report.py`), made with
the same recipe on 14 of the 20 actors each; the bundle records it as `expected_metrics` and
takes its ensemble weights from the folds' validation actors. Training still watches a fixed
subset of its own clips, scored in inference mode each epoch: it restores the best epoch and
lowers the learning rate when a BatchNormalization or optimiser spike makes the served weights
worse, but it cannot see overfitting, which is why the epoch count is capped near the best
epochs of the folds.

Seeds are fixed: the same command on the same data gives the same bundle up to the order of
floating-point summation.
"""

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from ser_worker.audio import load_audio
from ser_worker.bundle import save_bundle
from ser_worker.datasets import LabelledClip, Split, load_dataset
from ser_worker.experiment import train_and_evaluate
from ser_worker.metrics import choose_cnn2d_weight, ensemble_macro_f1, plot_history
from ser_worker.training import PRECISIONS, TrainConfig

REPO = Path(__file__).resolve().parents[1]
LICENCES = [
    "RAVDESS: Livingstone SR, Russo FA (2018), The Ryerson Audio-Visual Database of Emotional "
    "Speech and Song, PLoS ONE 13(5): e0196391. CC BY-NC-SA 4.0 (non-commercial).",
    "TESS: Dupuis K, Pichora-Fuller MK (2010), Toronto Emotional Speech Set, University of "
    "Toronto. CC BY-NC-ND 4.0 (non-commercial).",
]


def every_clip(clips: list[LabelledClip], monitor_every: int) -> Split:
    """All clips for training; every n-th of them again as the monitor set, nothing for test."""
    train = tuple(range(len(clips)))
    return Split(
        train=train,
        val=train[::monitor_every],
        test=(),
        protocol="all",
        description=(
            f"training: all {len(clips)} clips; validation: 1 in {monitor_every} of the training "
            "clips (a stability monitor, not a held-out set); test: none (see docs/RESULTS.md)"
        ),
        train_speakers=tuple(sorted({clip.speaker for clip in clips})),
    )


# The folds whose training data is made like the default bundle's: RAVDESS actors and TESS.
ESTIMATE_PROTOCOL = "speaker-ravdess-with-tess"


def fold_runs(results: Path, recipe: str = "ours", protocol: str = ESTIMATE_PROTOCOL) -> list[dict]:
    """The speaker-independent RAVDESS runs (every fold and seed) of a recipe, from report.py."""
    return [
        json.loads(path.read_text())
        for path in sorted(results.glob(f"{protocol}-fold*--{recipe}--seed*.json"))
    ]


def cross_validated_weights(runs: list[dict]) -> dict[str, float] | None:
    """Ensemble weights for a bundle that has no validation speakers of its own.

    Each fold chooses a cnn2d weight on its 2 validation actors (never on its test actors);
    the bundle takes their mean. None when no fold stored its per-model outputs.
    """
    chosen = [
        choose_cnn2d_weight(run["probabilities"]["val"]["labels"], run["probabilities"]["val"])
        for run in runs
        if "probabilities" in run
    ]
    if not chosen:
        return None
    cnn2d = round(statistics.mean(chosen), 1)
    return {"cnn1d": round(1 - cnn2d, 1), "cnn2d": cnn2d}


def expected_metrics(runs: list[dict], weights: dict[str, float] | None) -> dict:
    """What to expect on unseen speakers: the folds' test figures, with the bundle's weights.

    Kept apart from the bundle's own `metrics` (it has no test side) and outside its version
    hash, because the folds are separate runs made with the same code and recipe.
    """
    if not runs:
        return {}
    estimate: dict = {
        "protocol": (
            f"{runs[0]['protocol']}: speaker-independent RAVDESS, folds of 4 unseen actors, "
            f"recipe {runs[0]['recipe']}, {len(runs)} runs (folds x seeds), docs/RESULTS.md"
        ),
        "runs": [f"{run['experiment']}--seed{run.get('seed', 0)}" for run in runs],
    }

    def summary(f1: list[float], accuracy: list[float] | None = None) -> dict:
        values = {"macro_f1": statistics.mean(f1), "runs": len(f1)}
        values["macro_f1_std"] = statistics.stdev(f1) if len(f1) > 1 else 0.0
        if accuracy:
            values["accuracy"] = statistics.mean(accuracy)
        return values

    for model in ("cnn1d", "cnn2d", "ensemble"):
        estimate[model] = summary(
            [run["metrics"][model]["macro_f1"] for run in runs],
            [run["metrics"][model]["accuracy"] for run in runs],
        )
    if weights is not None:
        tests = [run["probabilities"]["test"] for run in runs if "probabilities" in run]
        estimate["ensemble"] = {
            **summary([ensemble_macro_f1(t["labels"], t, weights["cnn2d"]) for t in tests]),
            "weights": weights,
        }
    return estimate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--out", type=Path, default=REPO / "ser_worker" / "data" / "default_bundle.zip"
    )
    parser.add_argument("--docs", type=Path, default=REPO / "docs")
    parser.add_argument(
        "--results",
        type=Path,
        default=REPO / "docs" / "results",
        help="report runs (scripts/report.py) whose speaker-ravdess folds give the estimate",
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--monitor-every", type=int, default=8)
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log = logging.getLogger("train_default_model")

    started = time.perf_counter()
    clips = load_dataset(args.data / "ravdess").clips + load_dataset(args.data / "tess").clips
    waveforms = [load_audio(clip.path) for clip in clips]
    log.info("decoded %d clips in %.0f s", len(clips), time.perf_counter() - started)

    split = every_clip(clips, args.monitor_every)
    folds = fold_runs(args.results)
    weights = cross_validated_weights(folds)
    log.info("ensemble weights from %d cross-validation runs: %s", len(folds), weights)
    config = TrainConfig(epochs=args.epochs, seed=args.seed, precision=args.precision)
    command = (
        f"python scripts/train_default_model.py --data DATA --epochs {args.epochs} "
        f"--monitor-every {args.monitor_every} --precision {args.precision} --seed {args.seed}"
    )
    with tempfile.TemporaryDirectory(prefix="ser-default-") as cache_dir:
        bundle, _no_test_metrics = train_and_evaluate(
            waveforms,
            clips,
            split,
            config,
            cache_dir=Path(cache_dir),
            progress=log.info,
            training_data={
                "corpora": ["RAVDESS actors 01-20 (speech, six classes)", "TESS (six classes)"],
                "config": config.to_dict(),
                "command": command,
                "unseen_speaker_estimate": f"docs/RESULTS.md, {ESTIMATE_PROTOCOL}, recipe ours",
            },
            licences=LICENCES,
            ensemble_weights=weights,
        )
    bundle.manifest["expected_metrics"] = expected_metrics(folds, weights)
    save_bundle(bundle, args.out)
    seconds = time.perf_counter() - started

    args.docs.mkdir(parents=True, exist_ok=True)
    for model, history in bundle.manifest["history"].items():
        plot_history(
            history, args.docs / f"default_model_history_{model}.png", title=f"default {model}"
        )
    report = {
        "version": bundle.version,
        "split": split.to_dict(),
        "seconds": round(seconds),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, CPU only",
        "training_data": bundle.manifest["training_data"],
        "expected_metrics": bundle.manifest["expected_metrics"],
        "history": bundle.manifest["history"],
    }
    (args.docs / "default_model.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s (%s) in %.0f s", args.out, bundle.version, seconds)


if __name__ == "__main__":
    main()
