"""Run the evaluation protocols of docs/RESULTS.md and render the report from their results.

    python research/report.py run --protocol random-ravdess --recipe ours --recipe study
    python research/report.py run --protocol speaker-ravdess --folds 0,1,2,3,4 --seeds 0,1,2
    python research/report.py render

How the published grid was made (docs/RESULTS.md, "Where and how the runs were made"):
random-ravdess, speaker-ravdess and speaker-ravdess-with-tess with `--bank .bank/bank.npz
--seeds 0,1,2,3,4 --epochs 40` on a GPU (research/gpu_grid.sh); speaker-tess (`--epochs 8`) and
cross-corpus (`--epochs 20`) with `--tess-every 2 --precision mixed_bfloat16` on 2 CPU cores.

Protocols (RAVDESS actors 01-20 and TESS, six classes, from --data or --bank):
  random-ravdess             the study's protocol: stratified clip-level split, same actors on
                             both sides
  speaker-ravdess            5 folds of 4 unseen actors (validation: other whole actors)
  speaker-ravdess-with-tess  the same folds, TESS's speakers added to the training side
  speaker-tess               trained on one TESS speaker, tested on the other (both directions)
  cross-corpus               trained on RAVDESS, tested on TESS, and the reverse
Recipes: `study` trains the two architectures plainly (no augmentation, no SpecAugment, centred
crops, no class weights); `ours` is the project's default training (TrainConfig()); `ours-cmn`
adds per-utterance mean normalisation of the log-mel.

Features come from the audio under --data, extracted and augmented per run, or from a bank
(research.feature_bank) whose clips and augmented copies were extracted once; a bank built
with --tess-every already holds only those TESS clips, so runs on it keep --tess-every 1.
Each run writes one JSON file under research/results/, so runs can be spread over machines and
sessions (KERAS_BACKEND=jax on a GPU runs the same code); `--shard K/N` and `--stop-after`
split a grid between processes; `render` rebuilds the tables from whatever results exist.
"""

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "research" / "results"
MODELS = ("cnn1d", "cnn2d", "ensemble")
RECIPES = ("study", "ours", "ours-cmn")
PROTOCOLS = (
    "random-ravdess",
    "speaker-ravdess",
    "speaker-ravdess-with-tess",
    "speaker-tess",
    "cross-corpus",
)
log = logging.getLogger("report")


def recipe_config(recipe: str, epochs: int, seed: int, precision: str):
    from ser_worker.features.study import FeatureSettings
    from ser_worker.training.fit import TrainConfig

    if recipe == "ours-cmn":
        return TrainConfig(
            epochs=epochs,
            seed=seed,
            precision=precision,
            feature_settings=FeatureSettings(subtract_clip_mean=True),
        )
    if recipe == "study":
        return TrainConfig(
            epochs=epochs,
            seed=seed,
            precision=precision,
            augment_copies=0,
            spec_augment=False,
            random_crop=False,
            class_weights=False,
        )
    return TrainConfig(epochs=epochs, seed=seed, precision=precision)


def experiments(
    protocol: str, ravdess: list, tess: list, folds: list[int], seed: int, tess_every: int = 1
):
    """(name, clips, split) triples; splits index into `clips`.

    tess_every > 1 trains on every n-th TESS clip of each speaker and emotion (TESS repeats the
    same 200 words for every speaker and emotion); TESS test sides always keep every clip.
    """
    from ser_worker.datasets import random_split, speaker_folds, tess_thinned_out

    if protocol == "random-ravdess":
        yield "random-ravdess", ravdess, random_split(ravdess, seed=seed)
    elif protocol == "speaker-ravdess":
        all_folds = speaker_folds(ravdess, n_folds=5, seed=seed)
        for fold in folds:
            yield f"speaker-ravdess-fold{fold}", ravdess, all_folds[fold]
    elif protocol == "speaker-ravdess-with-tess":
        # The same actor folds, with the TESS speakers (never tested here) added to training.
        both = ravdess + tess
        left_out = tess_thinned_out(both, tess_every)
        tess_indices = [i for i in range(len(ravdess), len(both)) if i not in left_out]
        all_folds = speaker_folds(ravdess, n_folds=5, seed=seed)
        for fold in folds:
            split = all_folds[fold]
            yield (
                f"speaker-ravdess-with-tess-fold{fold}",
                both,
                replace(
                    split,
                    train=split.train + tuple(tess_indices),
                    train_speakers=split.train_speakers + ("tess:OAF", "tess:YAF"),
                    description=split.description
                    + f"; training side adds {len(tess_indices)} TESS clips",
                ),
            )
    elif protocol == "speaker-tess":
        for train_speaker, test_speaker in (("tess:OAF", "tess:YAF"), ("tess:YAF", "tess:OAF")):
            yield (
                f"speaker-tess-{train_speaker[5:]}-to-{test_speaker[5:]}",
                tess,
                _transfer_split(
                    tess,
                    lambda c, s=train_speaker: c.speaker == s,
                    tess_thinned_out(tess, tess_every),
                    seed,
                    f"trained on {train_speaker}, tested on {test_speaker}",
                ),
            )
    elif protocol == "cross-corpus":
        both = ravdess + tess
        for source in ("ravdess", "tess"):
            target = "tess" if source == "ravdess" else "ravdess"
            yield (
                f"cross-{source}-to-{target}",
                both,
                _transfer_split(
                    both,
                    lambda c, s=source: c.corpus == s,
                    tess_thinned_out(both, tess_every),
                    seed,
                    f"trained on {source.upper()}, tested on all of {target.upper()}",
                ),
            )
    else:
        raise ValueError(protocol)


def _transfer_split(
    clips: list, on_train_side: Callable, not_trained: set[int], seed: int, description: str
):
    """Train (and validate, 10% stratified) on one side, test on everything else."""
    from ser_worker.datasets import Split, random_split

    train_side = [i for i, clip in enumerate(clips) if on_train_side(clip) and i not in not_trained]
    if not_trained:
        description += f" (training side thinned to {len(train_side)} clips)"
    test_side = [i for i, clip in enumerate(clips) if not on_train_side(clip)]
    inner = random_split(
        [clips[i] for i in train_side], test_fraction=0.0, val_fraction=0.1, seed=seed
    )
    return Split(
        train=tuple(train_side[i] for i in inner.train),
        val=tuple(train_side[i] for i in inner.val),
        test=tuple(test_side),
        protocol="transfer",
        description=description,
        seed=seed,
    )


class AudioSource:
    """Features extracted from the corpora's audio for every run (what train_and_evaluate does)."""

    def __init__(self, clips: list) -> None:
        from ser_worker.audio import load_audio

        self.waveforms = {clip.path: load_audio(clip.path) for clip in clips}

    def features(self, clips: list, settings) -> list:
        from ser_worker.training.fit import extract_all

        return extract_all([self.waveforms[clip.path] for clip in clips], settings)

    def copies(self, clips: list, settings, count: int, seed: int) -> list:
        from ser_worker.training.fit import augmented_copies

        waveforms = [self.waveforms[clip.path] for clip in clips]
        return augmented_copies(waveforms, settings, count, seed)


class BankSource:
    """Features read from a bank made by research.feature_bank (no audio needed)."""

    def __init__(self, bank) -> None:
        self.bank = bank
        self.index = {clip.path: i for i, clip in enumerate(bank.clips)}

    def features(self, clips: list, settings) -> list:
        return [self.bank.original(self.index[clip.path], settings) for clip in clips]

    def copies(self, clips: list, settings, count: int, seed: int) -> list:
        # The bank's copies were drawn once, from its own seed, whatever the run's seed.
        rows = [self.index[clip.path] for clip in clips]

        def copy(number: int):
            return (self.bank.copy(number, row, settings) for row in rows)

        return [copy(number) for number in range(count)]


def planned_runs(args: argparse.Namespace, ravdess: list, tess: list):
    """(out path, protocol, name, clips, split, recipe, seed) in the order they should run."""
    folds = [int(fold) for fold in args.folds.split(",")]
    for seed in [int(seed) for seed in args.seeds.split(",")]:
        for protocol in args.protocol:
            for name, clips, split in experiments(
                protocol, ravdess, tess, folds, seed, args.tess_every
            ):
                for recipe in args.recipe:
                    out = args.results / f"{name}--{recipe}--seed{seed}.json"
                    yield out, protocol, name, clips, split, recipe, seed


def run(args: argparse.Namespace) -> None:
    from ser_worker.datasets import load_dataset
    from ser_worker.training.experiment import train_and_evaluate_features

    started_all = time.monotonic()
    if args.bank:
        from research import feature_bank

        bank = feature_bank.load(args.bank, args.data)
        source = BankSource(bank)
        ravdess = [clip for clip in bank.clips if clip.corpus == "ravdess"]
        tess = [clip for clip in bank.clips if clip.corpus == "tess"]
    else:
        ravdess = load_dataset(args.data / "ravdess").clips
        tess = load_dataset(args.data / "tess").clips
        source = AudioSource(ravdess + tess)
    args.results.mkdir(parents=True, exist_ok=True)
    shard, shards = (int(part) for part in args.shard.split("/"))
    plan = list(planned_runs(args, ravdess, tess))
    for number, (out, protocol, name, clips, split, recipe, seed) in enumerate(plan):
        if number % shards != shard:
            continue
        if out.exists() and not args.overwrite:
            log.info("%s exists, skipped", out.name)
            continue
        if args.stop_after and time.monotonic() - started_all > args.stop_after:
            log.info("stopping: %d s have passed (--stop-after)", args.stop_after)
            break
        started = time.perf_counter()
        config = recipe_config(recipe, args.epochs, seed, args.precision)
        settings = config.feature_settings
        features = source.features(clips, settings)
        copies = source.copies(
            [clips[i] for i in split.train], settings, config.augment_copies, seed
        )
        with tempfile.TemporaryDirectory(prefix="ser-report-") as cache_dir:
            bundle, metrics = train_and_evaluate_features(
                features, copies, clips, split, config, cache_dir=Path(cache_dir), progress=log.info
            )
        result = {
            "experiment": name,
            "protocol": protocol,
            "recipe": recipe,
            "seed": seed,
            "precision": args.precision,
            "epochs_max": args.epochs,
            "features": "bank (log-mel in 0.31 dB steps)" if args.bank else "audio",
            "split": split.to_dict(),
            "metrics": metrics,
            "epochs_run": bundle.manifest["training_data"]["epochs_run"],
            "best_epoch": bundle.manifest["training_data"]["best_epoch"],
            "seconds": round(time.perf_counter() - started, 1),
            "machine": machine(),
            "probabilities": {
                side: side_probabilities(
                    bundle,
                    [features[i] for i in indices],
                    [clips[i].emotion for i in indices],
                )
                for side, indices in (("val", split.val), ("test", split.test))
            },
        }
        out.write_text(json.dumps(result, separators=(",", ":")) + "\n")
        log.info("%s: %s", out.name, {m: round(metrics[m]["macro_f1"], 3) for m in metrics})


def side_probabilities(bundle, features: list, labels: list[str]) -> dict:
    """Each model's softmax outputs per clip, so ensembles can be studied without retraining."""
    from ser_worker.bundle.predict import predict_probabilities

    outputs = predict_probabilities(bundle, features)
    return {
        "labels": labels,
        # float64 before rounding, so the JSON holds 0.0381 rather than 0.038029998540878296.
        **{name: np.round(p.astype(np.float64), 4).tolist() for name, p in outputs.items()},
    }


def machine() -> str:
    """Where a run was made; SER_ACCELERATOR names a GPU (e.g. on a JAX machine)."""
    import keras

    backend = keras.backend.backend()
    accelerator = os.environ.get("SER_ACCELERATOR", "CPU only")
    return (
        f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, {accelerator}, "
        f"Keras {keras.__version__} on {backend}"
    )


def _cell(values: list[float]) -> str:
    if not values:
        return "not run"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} (n={len(values)})"


# Every protocol is run with these; other recipes are experiments shown where they were run.
REQUIRED_RECIPES = ("study", "ours")


def _chosen(results: list[dict], protocol: str, recipe: str) -> list[dict]:
    return [r for r in results if r["protocol"] == protocol and r["recipe"] == recipe]


def _groups(results: list[dict]):
    """(protocol, recipe, runs) in table order; required recipes even when nothing was run."""
    for protocol in PROTOCOLS:
        for recipe in RECIPES:
            chosen = _chosen(results, protocol, recipe)
            if chosen or recipe in REQUIRED_RECIPES:
                yield protocol, recipe, chosen


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
                f"| {protocol} | {recipe} | {model} | {_cell(accuracy)} | "
                f"{_cell(macro_f1)} | {len(chosen) if model == 'cnn1d' else ''} |"
            )
    return "\n".join(lines)


def runs_table(results: list[dict]) -> str:
    """Every run on its own line: what the means above are made of, and what each one cost."""
    lines = [
        "| run | recipe | seed | train / val / test clips | cnn1d | cnn2d | ensemble | epochs "
        "1d/2d (best) | machine, training arithmetic | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(
        results,
        key=lambda r: (PROTOCOLS.index(r["protocol"]), r["experiment"], r["recipe"], _seed(r)),
    ):
        sizes = r["split"]["sizes"]
        epochs = "/".join(str(r["epochs_run"][m]) for m in ("cnn1d", "cnn2d"))
        best = r.get("best_epoch")
        if best:
            epochs += " (" + "/".join(str(best[m]) for m in ("cnn1d", "cnn2d")) + ")"
        f1 = " | ".join(f"{r['metrics'][m]['macro_f1']:.3f}" for m in MODELS)
        precision = r.get("precision", "float32")
        lines.append(
            f"| {r['experiment']} | {r['recipe']} | {_seed(r)} | {sizes['train']} / "
            f"{sizes['val']} / {sizes['test']} | {f1} | {epochs} | {r['machine']}, {precision} | "
            f"{r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def _seed(run: dict) -> int:
    return run.get("seed", 0)


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


def plot_confusions(results: list[dict]) -> list[Path]:
    from ser_worker.evaluation.metrics import plot_confusion

    return [
        plot_confusion(
            matrix,
            labels,
            RESULTS / f"confusion--{protocol}--{recipe}--{model}.png",
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
        ensemble = _paired_gain(results, "ensemble", better, baseline)
        cnn2d = _paired_gain(results, "cnn2d", better, baseline)
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
        cells = [_cell(v) for v in (val_2d, val_ens, weights, *test, weighted)]
        lines.append(f"| {protocol} | {recipe} | {len(studied)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if rows else "No run stored its per-model outputs yet."


def render(_args: argparse.Namespace) -> None:
    results = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))]
    plot_confusions(results)
    target = REPO / "docs" / "RESULTS.md"
    text = target.read_text()
    for marker, body in (
        ("<!-- results-table -->", summary_table(results)),
        ("<!-- target-check -->", target_check(results)),
        ("<!-- runs-table -->", runs_table(results)),
        ("<!-- confusion-table -->", confusion_table(results)),
        ("<!-- validation-table -->", validation_table(results)),
    ):
        text = _replace_between(text, marker, body)
    target.write_text(text)
    print(summary_table(results))
    print(target_check(results))


def _replace_between(text: str, marker: str, body: str) -> str:
    start = text.index(marker) + len(marker)
    end = text.index(marker, start)
    return f"{text[:start]}\n{body}\n{text[end:]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(required=True)
    run_parser = sub.add_parser("run", help="train and evaluate; one JSON per run")
    run_parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    run_parser.add_argument("--protocol", action="append", choices=PROTOCOLS, required=True)
    run_parser.add_argument("--recipe", action="append", choices=RECIPES)
    run_parser.add_argument("--folds", default="0,1,2,3,4")
    run_parser.add_argument("--epochs", type=int, default=30)
    run_parser.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1,2")
    run_parser.add_argument("--bank", type=Path, help="features from research.feature_bank")
    run_parser.add_argument(
        "--shard", default="0/1", help="K/N: run only every N-th planned run, from the K-th"
    )
    run_parser.add_argument(
        "--stop-after", type=int, default=0, help="start no run after this many seconds"
    )
    run_parser.add_argument("--tess-every", type=int, default=1)
    run_parser.add_argument(
        "--precision",
        choices=("float32", "mixed_bfloat16"),
        default="float32",
        help="training arithmetic (mixed_bfloat16: faster on CPUs with AMX/AVX512-BF16)",
    )
    run_parser.add_argument("--overwrite", action="store_true")
    run_parser.add_argument(
        "--results", type=Path, default=RESULTS, help="where the JSON of each run goes"
    )
    run_parser.set_defaults(func=run)
    render_parser = sub.add_parser("render", help="rebuild the tables of docs/RESULTS.md")
    render_parser.set_defaults(func=render)
    args = parser.parse_args()
    if getattr(args, "recipe", None) is None and args.func is run:
        args.recipe = ["study", "ours"]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.func(args)


if __name__ == "__main__":
    main()
