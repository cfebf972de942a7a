"""Run the evaluation protocols of docs/RESULTS.md and render the report from their results.

    python scripts/report.py run --protocol random-ravdess --recipe ours --recipe study
    python scripts/report.py run --protocol speaker-ravdess --folds 0,1,2,3,4
    python scripts/report.py render

Protocols (RAVDESS actors 01-20 and TESS, six classes, from --data):
  random-ravdess    the study's protocol: stratified clip-level split, same actors on both sides
  speaker-ravdess   5 folds of 4 unseen actors (validation: other whole actors)
  speaker-tess      trained on one TESS speaker, tested on the other (both directions)
  cross-corpus      trained on RAVDESS, tested on TESS, and the reverse
Recipes: `study` trains the two architectures plainly (no augmentation, no SpecAugment, centred
crops, no class weights); `ours` is the project's default training (TrainConfig()).

Each run writes one JSON file under docs/results/, so runs can be spread over machines and
sessions (KERAS_BACKEND=jax on a GPU runs the same code); `render` rebuilds the tables from
whatever results exist and marks what has not been run.
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
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"
MODELS = ("cnn1d", "cnn2d", "ensemble")
PROTOCOLS = ("random-ravdess", "speaker-ravdess", "speaker-tess", "cross-corpus")
log = logging.getLogger("report")


def recipe_config(recipe: str, epochs: int, seed: int):
    from ser_worker.training import TrainConfig

    if recipe == "study":
        return TrainConfig(
            epochs=epochs,
            seed=seed,
            augment_copies=0,
            spec_augment=False,
            random_crop=False,
            class_weights=False,
        )
    return TrainConfig(epochs=epochs, seed=seed)


def experiments(protocol: str, ravdess: list, tess: list, folds: list[int], seed: int):
    """(name, clips, split) triples; splits index into `clips`."""
    from ser_worker.datasets import random_split, speaker_folds

    if protocol == "random-ravdess":
        yield "random-ravdess", ravdess, random_split(ravdess, seed=seed)
    elif protocol == "speaker-ravdess":
        all_folds = speaker_folds(ravdess, n_folds=5, seed=seed)
        for fold in folds:
            yield f"speaker-ravdess-fold{fold}", ravdess, all_folds[fold]
    elif protocol == "speaker-tess":
        for train_speaker, test_speaker in (("tess:OAF", "tess:YAF"), ("tess:YAF", "tess:OAF")):
            yield (
                f"speaker-tess-{train_speaker[5:]}-to-{test_speaker[5:]}",
                tess,
                _transfer_split(
                    tess,
                    lambda c, s=train_speaker: c.speaker == s,
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
                    seed,
                    f"trained on {source.upper()}, tested on all of {target.upper()}",
                ),
            )
    else:
        raise ValueError(protocol)


def _transfer_split(clips: list, on_train_side: Callable, seed: int, description: str):
    """Train (and validate, 10% stratified) on one side, test on everything else."""
    from ser_worker.datasets import Split, random_split

    train_side = [i for i, clip in enumerate(clips) if on_train_side(clip)]
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


def run(args: argparse.Namespace) -> None:
    from ser_worker.audio import load_audio
    from ser_worker.datasets import load_dataset
    from ser_worker.experiment import train_and_evaluate

    ravdess = load_dataset(args.data / "ravdess").clips
    tess = load_dataset(args.data / "tess").clips
    waveforms = {clip.path: load_audio(clip.path) for clip in ravdess + tess}
    RESULTS.mkdir(parents=True, exist_ok=True)
    folds = [int(fold) for fold in args.folds.split(",")]
    for protocol in args.protocol:
        for name, clips, split in experiments(protocol, ravdess, tess, folds, args.seed):
            for recipe in args.recipe:
                out = RESULTS / f"{name}--{recipe}--seed{args.seed}.json"
                if out.exists() and not args.overwrite:
                    log.info("%s exists, skipped", out.name)
                    continue
                started = time.perf_counter()
                with tempfile.TemporaryDirectory(prefix="ser-report-") as cache_dir:
                    bundle, metrics = train_and_evaluate(
                        [waveforms[clip.path] for clip in clips],
                        clips,
                        split,
                        recipe_config(recipe, args.epochs, args.seed),
                        cache_dir=Path(cache_dir),
                        progress=log.info,
                    )
                result = {
                    "experiment": name,
                    "protocol": protocol,
                    "recipe": recipe,
                    "seed": args.seed,
                    "split": split.to_dict(),
                    "metrics": metrics,
                    "epochs_run": bundle.manifest["training_data"]["epochs_run"],
                    "seconds": round(time.perf_counter() - started, 1),
                    "machine": machine(),
                }
                out.write_text(json.dumps(result, indent=1) + "\n")
                log.info("%s: %s", out.name, {m: round(metrics[m]["macro_f1"], 3) for m in metrics})


def machine() -> str:
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


def render(_args: argparse.Namespace) -> None:
    results = [json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))]
    lines = [
        "| protocol | recipe | model | accuracy | macro-F1 | runs | machine, time per run |",
        "|---|---|---|---|---|---|---|",
    ]
    for protocol in PROTOCOLS:
        for recipe in ("study", "ours"):
            chosen = [r for r in results if r["protocol"] == protocol and r["recipe"] == recipe]
            for model in MODELS:
                accuracy = [
                    r["metrics"][model]["accuracy"] for r in chosen if model in r["metrics"]
                ]
                macro_f1 = [
                    r["metrics"][model]["macro_f1"] for r in chosen if model in r["metrics"]
                ]
                where = (
                    f"{chosen[0]['machine']}, "
                    f"~{statistics.mean(r['seconds'] for r in chosen):.0f} s"
                    if chosen
                    else ""
                )
                runs = (
                    ", ".join(sorted(r["experiment"] for r in chosen)) if model == "cnn1d" else ""
                )
                lines.append(
                    f"| {protocol} | {recipe} | {model} | {_cell(accuracy)} | "
                    f"{_cell(macro_f1)} | {runs} | {where if model == 'cnn1d' else ''} |"
                )
    confused = [
        "| experiment | recipe | model | most-confused pairs (true→predicted: count) |",
        "|---|---|---|---|",
    ]
    for r in results:
        for model in MODELS:
            pairs = ", ".join(
                f"{p['true']}→{p['predicted']}: {p['count']}"
                for p in r["metrics"][model]["most_confused"][:3]
            )
            confused.append(f"| {r['experiment']} | {r['recipe']} | {model} | {pairs} |")
    table = "\n".join(lines)
    confusions = "\n".join(confused)
    target = REPO / "docs" / "RESULTS.md"
    text = target.read_text()
    text = _replace_between(text, "<!-- results-table -->", table)
    text = _replace_between(text, "<!-- confusion-table -->", confusions)
    target.write_text(text)
    print(table)


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
    run_parser.add_argument("--recipe", action="append", choices=("study", "ours"))
    run_parser.add_argument("--folds", default="0,1,2,3,4")
    run_parser.add_argument("--epochs", type=int, default=30)
    run_parser.add_argument("--seed", type=int, default=0)
    run_parser.add_argument("--overwrite", action="store_true")
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
