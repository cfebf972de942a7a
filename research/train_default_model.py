"""Train the default bundle shipped in the package on every clip of the data folder.

    python research/report.py run --protocol speaker-ravdess-with-tess ...  # first: the folds
    python research/encoder_report.py embed --out .bank/encoder.npz          # and the encoder's
    python research/encoder_report.py run --embeddings .bank/encoder.npz
    python research/train_default_model.py --data ../shared/data --precision mixed_bfloat16

Trains both CNNs on every RAVDESS (actors 01-20) and TESS clip of the six classes with the
project's training recipe, fits the speech encoder's linear head on the same clips
(`--cnn-weights-from BUNDLE` keeps that bundle's CNNs and fits only the head: minutes instead
of an hour) and writes:
  ser_worker/data/default_bundle.zip   the bundle `ser-cli` installs on first use
  docs/default_model.json              its training data, recipe, timings and training curves
  docs/default_model_history_*.png     the training curves

No clip is held out, so this run measures nothing about unseen speakers: that estimate comes
from the speaker-independent RAVDESS folds of docs/RESULTS.md (`research/report.py`), made with
the same recipe on 14 of the 20 actors each; the bundle records it as `expected_metrics` and
takes its ensemble weights from the folds' validation actors (the encoder's share from
research/encoder_report.py's runs on the same folds). Training still watches a fixed
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

import numpy as np

from ser_worker.audio import load_audio, trim_silence
from ser_worker.bundle import load_bundle, save_bundle, with_encoder_head
from ser_worker.bundle.predict import embed
from ser_worker.datasets import LabelledClip, Split, load_dataset
from ser_worker.evaluation.metrics import argmax_macro_f1, choose_cnn2d_weight, plot_history
from ser_worker.labels import EMOTIONS, ENCODER, ENSEMBLE
from ser_worker.models import encoder as speech_encoder
from ser_worker.training.experiment import train_and_evaluate
from ser_worker.training.fit import PRECISIONS, TrainConfig

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


def encoder_fold_runs(path: Path, protocol: str = ESTIMATE_PROTOCOL) -> dict[str, dict]:
    """The encoder's runs on the same folds (research/encoder_report.py), keyed like `run_key`."""
    if not path.exists():
        return {}
    rows = json.loads(path.read_text())
    return {run_key(row): row for row in rows if row["protocol"] == protocol}


def run_key(run: dict) -> str:
    return f"{run['experiment']}--seed{run.get('seed', 0)}"


def with_encoder_share(
    cnn_weights: dict[str, float] | None, encoder_runs: dict[str, dict]
) -> dict[str, float] | None:
    """The CNNs' weights scaled down to make room for the encoder's share: the mean of the
    shares the folds chose on their validation actors."""
    shares = [row["encoder_share"] for row in encoder_runs.values() if "encoder_share" in row]
    if cnn_weights is None or not shares:
        return cnn_weights
    share = round(statistics.mean(shares), 1)
    return {ENCODER: share} | {
        model: round((1 - share) * weight, 2) for model, weight in cnn_weights.items()
    }


def weighted_macro_f1(side_outputs: dict, weights: dict[str, float]) -> float:
    total = sum(weights.values())
    p = sum(weight / total * np.asarray(side_outputs[model]) for model, weight in weights.items())
    return argmax_macro_f1(side_outputs["labels"], p)


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
    if encoder_runs:
        estimate[ENCODER] = summary(
            [row["encoder"]["macro_f1"] for row in encoder_runs.values()],
            [row["encoder"]["accuracy"] for row in encoder_runs.values()],
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
        default=REPO / "research" / "results",
        help="report runs (research/report.py) whose speaker-ravdess folds give the estimate",
    )
    parser.add_argument(
        "--cnn-weights-from",
        type=Path,
        help="keep this bundle's CNNs (and their training record); fit only the encoder head",
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
    # The CNNs learn from trimmed clips, the encoder's head from the clips as decoded: what
    # each reads in the service (ser_worker.service.tasks.inference).
    untrimmed = [load_audio(clip.path, trim=False) for clip in clips]
    log.info("decoded %d clips in %.0f s", len(clips), time.perf_counter() - started)

    split = every_clip(clips, args.monitor_every)
    folds = fold_runs(args.results)
    encoder_runs = encoder_fold_runs(args.results / "encoder" / "runs.json")
    if folds and not encoder_runs:
        parser.error(
            f"no encoder runs of {ESTIMATE_PROTOCOL} under {args.results / 'encoder'}: "
            "run research/encoder_report.py first (README, 'The default model')"
        )
    cnn_weights = cross_validated_weights(folds)
    weights = with_encoder_share(cnn_weights, encoder_runs)
    log.info("ensemble weights from %d + %d runs: %s", len(folds), len(encoder_runs), weights)
    if args.cnn_weights_from:
        cnns = load_bundle(args.cnn_weights_from)
        notes = (
            f"CNNs, their training record and feature settings from version {cnns.version} "
            "(--cnn-weights-from); encoder head fitted on every clip by this script"
        )
    else:
        cnns = train_cnns(args, clips, [trim_silence(y) for y in untrimmed], split, log)
        notes = ""
    started_head = time.perf_counter()
    vectors = embed(untrimmed)
    head = speech_encoder.fit_linear_head(vectors, [clip.emotion for clip in clips], EMOTIONS)
    log.info("encoder head fitted in %.0f s", time.perf_counter() - started_head)
    bundle = with_encoder_head(
        cnns,
        head,
        weights,
        split=split.to_dict(),
        training_data={
            "encoder": (
                f"{speech_encoder.ENCODER_NAME}, blocks {list(speech_encoder.LAYERS)} pooled; "
                f"linear head (C=0.1, balanced classes) on all {len(clips)} clips, untrimmed"
            ),
            "unseen_speaker_estimate": (
                f"docs/RESULTS.md, {ESTIMATE_PROTOCOL}, recipe ours and the encoder's runs"
            ),
        },
        notes=notes,
    )
    bundle.manifest["expected_metrics"] = expected_metrics(folds, weights, encoder_runs)
    save_bundle(bundle, args.out)
    seconds = time.perf_counter() - started

    args.docs.mkdir(parents=True, exist_ok=True)
    if not args.cnn_weights_from:
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
        "ensemble_weights": weights,
        "notes": notes,
        "history": bundle.manifest["history"],
    }
    (args.docs / "default_model.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s (%s) in %.0f s", args.out, bundle.version, seconds)


def train_cnns(args: argparse.Namespace, clips: list, waveforms: list, split: Split, log):
    """Both CNNs on every clip, with the project's recipe."""
    config = TrainConfig(epochs=args.epochs, seed=args.seed, precision=args.precision)
    command = (
        f"python research/train_default_model.py --data DATA --epochs {args.epochs} "
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
            },
            licences=LICENCES,
        )
    return bundle


if __name__ == "__main__":
    main()
