"""Train the default bundle shipped in the package, and report it on speakers it never heard.

    python scripts/train_default_model.py --data ../shared/data

Trains both CNNs on RAVDESS and TESS (six classes) with the project's training code, holds out
whole RAVDESS actors for validation (early stopping) and for the test figures, and writes:
  ser_worker/data/default_bundle.zip   the bundle `ser-cli` installs on first use
  docs/default_model.json              its held-out metrics, split and timings
  docs/default_model_*.png             confusion matrices and training curves

Seeds are fixed: the same command on the same data reproduces the figures within the noise
of floating-point summation order.
"""

import argparse
import json
import logging
import platform
import tempfile
import time
from pathlib import Path

from ser_worker.audio import load_audio
from ser_worker.bundle import save_bundle
from ser_worker.datasets import LabelledClip, Split, load_dataset
from ser_worker.experiment import train_and_evaluate
from ser_worker.metrics import plot_confusion, plot_history
from ser_worker.training import TrainConfig

REPO = Path(__file__).resolve().parents[1]
LICENCES = [
    "RAVDESS: Livingstone SR, Russo FA (2018), The Ryerson Audio-Visual Database of Emotional "
    "Speech and Song, PLoS ONE 13(5): e0196391. CC BY-NC-SA 4.0 (non-commercial).",
    "TESS: Dupuis K, Pichora-Fuller MK (2010), Toronto Emotional Speech Set, University of "
    "Toronto. CC BY-NC-ND 4.0 (non-commercial).",
]


def hold_out_actors(
    clips: list[LabelledClip], test_actors: set[str], val_actors: set[str], tess_every: int
) -> Split:
    """Whole RAVDESS actors for test and validation; TESS (thinned) only in training."""
    train, val, test = [], [], []
    tess_seen = 0
    for index, clip in enumerate(clips):
        if clip.speaker in test_actors:
            test.append(index)
        elif clip.speaker in val_actors:
            val.append(index)
        elif clip.corpus == "tess":
            # TESS repeats the same 200 words per speaker and emotion: every n-th clip keeps its
            # variety at a fraction of the CPU time.
            if tess_seen % tess_every == 0:
                train.append(index)
            tess_seen += 1
        else:
            train.append(index)
    return Split(
        tuple(train),
        tuple(val),
        tuple(test),
        protocol="speaker",
        description=(
            f"test: RAVDESS actors {sorted(test_actors)}; validation: RAVDESS actors "
            f"{sorted(val_actors)}; training: the other RAVDESS actors and "
            f"1 in {tess_every} TESS clips (both TESS speakers)"
        ),
        train_speakers=tuple(sorted({clips[i].speaker for i in train})),
        val_speakers=tuple(sorted(val_actors)),
        test_speakers=tuple(sorted(test_actors)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--out", type=Path, default=REPO / "ser_worker" / "data" / "default_bundle.zip"
    )
    parser.add_argument("--docs", type=Path, default=REPO / "docs")
    parser.add_argument("--test-actors", default="17,18,19,20")
    parser.add_argument("--val-actors", default="15,16")
    parser.add_argument("--tess-every", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--augment-copies", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log = logging.getLogger("train_default_model")

    started = time.perf_counter()
    clips = load_dataset(args.data / "ravdess").clips + load_dataset(args.data / "tess").clips
    waveforms = [load_audio(clip.path) for clip in clips]
    log.info("decoded %d clips in %.0f s", len(clips), time.perf_counter() - started)

    def actors(text: str) -> set[str]:
        return {f"ravdess:{int(actor):02d}" for actor in text.split(",")}

    split = hold_out_actors(
        clips, actors(args.test_actors), actors(args.val_actors), args.tess_every
    )
    config = TrainConfig(
        epochs=args.epochs,
        early_stopping_patience=args.patience,
        reduce_lr_patience=max(1, args.patience // 2),
        augment_copies=args.augment_copies,
        seed=args.seed,
    )
    with tempfile.TemporaryDirectory(prefix="ser-default-") as cache_dir:
        bundle, metrics = train_and_evaluate(
            waveforms,
            clips,
            split,
            config,
            cache_dir=Path(cache_dir),
            progress=log.info,
            training_data={
                "corpora": ["RAVDESS actors 01-20 (speech, six classes)", "TESS (six classes)"],
                "config": config.to_dict(),
                "command": "python scripts/train_default_model.py --data ../shared/data",
            },
            licences=LICENCES,
        )
    save_bundle(bundle, args.out)
    seconds = time.perf_counter() - started

    args.docs.mkdir(parents=True, exist_ok=True)
    for model, model_metrics in metrics.items():
        plot_confusion(
            model_metrics["confusion"],
            model_metrics["labels"],
            args.docs / f"default_model_confusion_{model}.png",
            title=f"default {model}: unseen RAVDESS actors {args.test_actors}",
        )
    for model, history in bundle.manifest["history"].items():
        plot_history(
            history, args.docs / f"default_model_history_{model}.png", title=f"default {model}"
        )
    report = {
        "version": bundle.version,
        "split": split.to_dict(),
        "metrics": metrics,
        "seconds": round(seconds),
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{len(__import__('os').sched_getaffinity(0))} cores, CPU only",
        "training_data": bundle.manifest["training_data"],
    }
    (args.docs / "default_model.json").write_text(json.dumps(report, indent=2) + "\n")
    for model, model_metrics in metrics.items():
        log.info(
            "%s: accuracy %.3f macro-F1 %.3f",
            model,
            model_metrics["accuracy"],
            model_metrics["macro_f1"],
        )
    log.info("wrote %s (%s) in %.0f s", args.out, bundle.version, seconds)


if __name__ == "__main__":
    main()
