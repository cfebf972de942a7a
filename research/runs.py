"""`report.py run`: train and evaluate the planned runs of a grid, one JSON per run.

Features come from the audio under --data, extracted and augmented per run, or from a bank
(research.feature_bank) whose clips and augmented copies were extracted once. Each run writes
its own file, so a grid can be spread over machines and sessions (`--shard K/N`,
`--stop-after`); runs whose file exists are skipped.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from research.common import run_file
from research.protocols import experiments, recipe_config

log = logging.getLogger("report")


class AudioSource:
    """Features extracted from the corpora's audio for every run (what train_and_evaluate does)."""

    def __init__(self, clips: list) -> None:
        from ser_worker.audio import load_audio

        self.waveforms = {clip.path: load_audio(clip.path) for clip in clips}

    def features(self, clips: list, settings) -> list:
        from ser_worker.training.cache import extract_all

        return extract_all([self.waveforms[clip.path] for clip in clips], settings)

    def copies(self, clips: list, settings, count: int, seed: int) -> list:
        from ser_worker.training.cache import augmented_copies

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
                    out = args.results / run_file(name, recipe, seed)
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
            "epochs_run": bundle.manifest.training_data["epochs_run"],
            "best_epoch": bundle.manifest.training_data["best_epoch"],
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
    from ser_worker.bundle.core import predict_probabilities

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
