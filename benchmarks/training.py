"""Section 4, training: seconds per epoch and peak memory of ``training.fit.train`` with 0 and 2
augmented copies, then the training data path alone with many copies, where RAM that grew with
the copies would show next to the copies' size."""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.harness import median
from benchmarks.memory import PeakMemory, proc_status
from ser_worker.labels import EMOTIONS, MODEL_NAMES

if TYPE_CHECKING:
    from benchmarks.harness import Bench

TRAIN_CLIPS, VAL_CLIPS, TRAIN_EPOCHS = 64, 16, 3
DATA_CLIPS, DATA_COPIES = 96, 8


def section_training(spec: dict) -> dict:
    import numpy as np

    from ser_worker.audio import load_audio
    from ser_worker.training.config import TrainConfig
    from ser_worker.training.fit import train

    memory = PeakMemory()
    train_w = [load_audio(p) for p in spec["train"]]
    val_w = [load_audio(p) for p in spec["val"]]
    # Speed does not depend on the labels; cycling them keeps every class present.
    train_y = [EMOTIONS[i % len(EMOTIONS)] for i in range(len(train_w))]
    val_y = [EMOTIONS[i % len(EMOTIONS)] for i in range(len(val_w))]
    epoch_ends: dict[str, list[float]] = {}
    pattern = re.compile(r"^(\w+) epoch (\d+)/")

    def progress(message: str) -> None:
        match = pattern.match(message)
        if match:
            epoch_ends.setdefault(match.group(1), []).append(time.perf_counter())

    config = TrainConfig(
        epochs=spec["epochs"], augment_copies=spec["copies"], early_stopping_patience=100
    )
    cache = Path(spec["cache_dir"])
    t = time.perf_counter()
    result = train(train_w, train_y, val_w, val_y, config, cache_dir=cache, progress=progress)
    total = time.perf_counter() - t
    peaks = memory.stop()
    cache_mb = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file()) / 2**20
    # TrainingBatches: whole batches only (at least one, of all clips when fewer than a batch).
    n_samples = len(train_w) * (1 + spec["copies"])
    samples = min(n_samples, max(1, n_samples // config.batch_size) * config.batch_size)
    return {
        "train_clips": len(train_w),
        "val_clips": len(val_w),
        "copies": spec["copies"],
        "epochs": spec["epochs"],
        "samples_per_epoch": samples,
        # Epoch 1 includes tracing; later epochs are the steady state.
        "seconds_per_epoch": {
            name: median(list(np.diff(ends))) for name, ends in epoch_ends.items()
        },
        "epochs_run": result.epochs_run,
        "total_s": total,
        "cache_mb": cache_mb,
        "peak_rss_mb": proc_status()["VmHWM"],
        "peak_anon_mb": peaks["RssAnon"],
    }


def section_training_data(spec: dict) -> dict:
    """The training data path alone (augment, cache, one epoch of batches for each model),
    with many copies: memory that grew with the copies would show here at a size that
    TensorFlow's own memory cannot hide."""
    import numpy as np

    from ser_worker.audio import load_audio
    from ser_worker.features.study import FeatureSettings, fit_normalizer
    from ser_worker.training.batches import TrainingBatches
    from ser_worker.training.cache import (
        augmented_copy,
        balanced_class_weights,
        build_cache,
        extract_all,
        label_indices,
    )

    settings = FeatureSettings()
    waveforms = [load_audio(p) for p in spec["clips"]]
    features = extract_all(waveforms, settings)
    normalizer = fit_normalizer(features)
    y = label_indices([EMOTIONS[i % len(EMOTIONS)] for i in range(len(waveforms))])
    before = proc_status()["RssAnon"]
    memory = PeakMemory()
    rng = np.random.default_rng(0)
    cache = build_cache(
        features,
        y,
        normalizer,
        settings,
        Path(spec["cache_dir"]),
        copies=[augmented_copy(waveforms, settings, rng) for _ in range(spec["copies"])],
    )
    for name in MODEL_NAMES:
        batches = TrainingBatches(
            cache,
            name,
            settings,
            batch_size=32,
            class_weights=balanced_class_weights(cache.y),
            random_crop=True,
            spec_augment=True,
            seed=0,
        )
        for index in range(len(batches)):
            batches[index]
    peak = memory.stop()
    return {
        "clips": len(waveforms),
        "copies": spec["copies"],
        "samples": int(len(cache.y)),
        "cache_mb": (cache.x1.nbytes + cache.mel.nbytes) / 2**20,
        "anon_growth_mb": peak["RssAnon"] - before,
        "peak_rss_mb": proc_status()["VmHWM"],
    }


def run_training(bench: Bench, clips: list[Path]) -> dict[str, Any]:
    n_train, n_val = bench.args.train_clips, VAL_CLIPS
    chosen = clips[: n_train + n_val]
    train_clips, val_clips = chosen[:n_train], chosen[n_train:]
    out = {}
    for copies in (0, 2):
        bench.say(f"training, {copies} augmented copies")
        cache = bench.workdir / f"train-cache-{copies}"
        out[f"copies_{copies}"] = bench.section(
            "training",
            {
                "train": list(map(str, train_clips)),
                "val": list(map(str, val_clips)),
                "copies": copies,
                "epochs": bench.args.train_epochs,
                "cache_dir": str(cache),
            },
        )
        shutil.rmtree(cache, ignore_errors=True)
    many = bench.args.data_copies
    data_clips = clips[: bench.args.data_clips]
    for copies in (0, many):
        bench.say(f"training data path alone, {copies} augmented copies")
        cache = bench.workdir / f"data-cache-{copies}"
        out[f"data_copies_{copies}"] = bench.section(
            "training_data",
            {"clips": list(map(str, data_clips)), "copies": copies, "cache_dir": str(cache)},
        )
        shutil.rmtree(cache, ignore_errors=True)
    few, lots = out["data_copies_0"], out[f"data_copies_{many}"]
    out["data_copies"] = many
    out["data_anon_growth_mb"] = lots["anon_growth_mb"] - few["anon_growth_mb"]
    out["data_copies_mb"] = lots["cache_mb"] - few["cache_mb"]
    zero, two = out["copies_0"], out["copies_2"]
    out["memory_growth_mb"] = two["peak_rss_mb"] - zero["peak_rss_mb"]
    out["anon_growth_mb"] = two["peak_anon_mb"] - zero["peak_anon_mb"]
    out["seconds_per_1000_samples"] = {
        name: 1000 * zero["seconds_per_epoch"][name] / zero["samples_per_epoch"]
        for name in zero["seconds_per_epoch"]
    }
    return out
