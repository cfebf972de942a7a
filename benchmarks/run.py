#!/usr/bin/env python
"""Throughput, latency and memory of ser on this machine, as one table (or one JSON object).

    python benchmarks/run.py [--data DIR] [--clips N] [--repeats K] [--service-repeats K]
                             [--skip-service] [--skip-training] [--json] [--profile DIR]
    python benchmarks/run.py --report saved.json     # the table of an earlier --json run

Defaults (512 clips, 5 runs, 3 end to end) take about 5 minutes on 2 quiet cores. --profile
writes py-spy profiles (wall clock, raw format) of the 1-process worker's last measured run;
it needs `py-spy` on PATH.

Everything is measured in ONE invocation, and within each section the contenders alternate
run by run, so ratios hold on a noisy machine; every figure is the median of the runs and every
ratio the median of the per-run ratios of contenders measured back to back.

1. Features, per core (one process, BLAS/numba limited to one thread): ``audio.load_audio`` +
   ``features.extract`` against the study's formulation (benchmarks/study_features.py: librosa
   per clip, Python energy loop), on the same clips; the outputs are asserted to agree.
2. Inference, in one process with all cores, on the first 128 clips: each model and both
   together batched
   (``inference.predict_probabilities``, batch = SER_BATCH_SIZE, default 16) against a per-clip
   ``model.predict`` loop; the models' analytic FLOPs per clip (benchmarks/flops.py) against a
   measured 2048x2048 float32 matrix multiply rate (the best of numpy and TensorFlow), i.e. how
   close batched inference comes to the machine's compute floor. When the bundle has the
   speech encoder, its vectors (``inference.embed`` on the untrimmed clips) are timed apart:
   "both" is the CNNs and the encoder's head on vectors computed beforehand.
3. End to end: ``ser-cli submit PATHS --wait --json --force`` through Redis + PostgreSQL + real
   prefork Celery workers, with 1 and with 2 worker processes (SER_TF_THREADS=1 each, one per
   core), against the in-process library call (load_audio + inference.predict, same batch and
   thread settings). Both worker sets run side by side on two Redis databases, so the three
   contenders can alternate. Also time to first result and worker cold start.
4. Training: seconds per epoch per model (ser_worker.training.fit.train on a small labelled set) and
   peak memory with 0 and 2 augmented copies; then the training data path alone (augment,
   disk cache, an epoch of batches) with 0 and 8 copies, where RAM that grew with the copies
   would be visible next to the copies' size.
5. Peak RSS (VmHWM) per worker process, in-process baseline and training job.

Services: PostgreSQL at --pg (a throwaway database is created from the admin database and
dropped at the end), Redis at --redis (two database indexes, flushed before and after).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
BIN = Path(sys.executable).parent
DEFAULT_DATA = REPO.parent / "shared" / "data"
AUDIO_SUFFIXES = {".flac", ".wav", ".ogg", ".mp3"}
TAG = "@@bench@@ "

DEFAULT_CLIPS = 512
DEFAULT_REPEATS = 5
DEFAULT_SERVICE_REPEATS = 3
NAIVE_CLIPS = 24
INFERENCE_CLIPS = 128  # eight batches: per-clip rates do not need more
TRAIN_CLIPS, VAL_CLIPS, TRAIN_EPOCHS = 64, 16, 3
DATA_CLIPS, DATA_COPIES = 96, 8
MATMUL_N = 2048

TARGETS = {
    # key: (comparison, threshold, description)
    "features_speedup": (">=", 3.0, "features vs study, per core"),
    "features_match": ("==", True, "same outputs as the study"),
    "batch_inference_speedup": (">=", 10.0, "batched vs per-clip model.predict"),
    "service_efficiency_1_worker": (">=", 0.8, "1 worker vs in-process"),
    "scaling_2_workers": (">=", 1.7, "2 workers vs 1"),
    "worker_cold_start_s": ("<", 10.0, "worker start to first result"),
    "worker_rss_mb": ("<", 1536.0, "peak RSS per worker process"),
    # Memory must not grow with the augmented copies: judged on the training data path, where the
    # copies are large enough to see; the whole train() runs' peaks (also reported) move by
    # +-150 MB with TensorFlow's allocator from run to run, more than small copies weigh.
    "training_data_growth_fraction": ("<", 0.25, "data path RAM growth / bytes of the copies"),
}


# --- small helpers ------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def proc_status(pid: int | str = "self") -> dict[str, float]:
    """Memory lines of /proc/PID/status in MiB (VmHWM = peak RSS)."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) / 1024
    return out


def child_pids(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of these processes so far (/proc/PID/stat)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def emit(payload: dict) -> None:
    """A child section's result: one tagged JSON line on stdout."""
    sys.stdout.write(TAG + json.dumps(payload) + "\n")
    sys.stdout.flush()


def select_clips(data: Path, n: int) -> list[Path]:
    """n audio files spread evenly over the sorted listing (all corpora, speakers, emotions)."""
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise SystemExit(f"no audio files under {data}")
    if n >= len(files):
        return files
    step = len(files) / n
    return [files[int(i * step)] for i in range(n)]


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- child sections (each runs in its own process) ----------------------------------------------


def section_features(spec: dict) -> dict:
    from benchmarks.study_features import agreement, study_extract
    from ser_worker.audio import AudioError, load_audio
    from ser_worker.features.study import FeatureSettings, extract

    settings = FeatureSettings()
    clips, rejected = [], {}
    for path in spec["clips"]:
        try:
            load_audio(path)
            clips.append(path)
        except AudioError as error:
            rejected[path] = error.code
    # Warm-up: librosa's numba kernels compile on first use in both implementations.
    study_extract(clips[0], settings)
    extract(load_audio(clips[0]), settings)

    match = None
    for path in clips:
        a = agreement(study_extract(path, settings), extract(load_audio(path), settings))
        match = a if match is None else match.merge(a)

    def ours() -> tuple[float, float, float]:
        decode = 0.0
        wall, cpu = time.perf_counter(), time.process_time()
        for path in clips:
            t = time.perf_counter()
            y = load_audio(path)
            decode += time.perf_counter() - t
            extract(y, settings)
        return time.perf_counter() - wall, time.process_time() - cpu, decode

    def study() -> tuple[float, float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for path in clips:
            study_extract(path, settings)
        return time.perf_counter() - wall, time.process_time() - cpu, float("nan")

    runs: dict[str, list[tuple[float, float, float]]] = {"ours": [], "study": []}
    for r in range(spec["repeats"]):
        order = ["study", "ours"] if r % 2 == 0 else ["ours", "study"]
        for name in order:
            runs[name].append((ours if name == "ours" else study)())
    n = len(clips)
    return {
        "clips": n,
        "rejected": rejected,
        "ours_clips_s": median([n / w for w, _, _ in runs["ours"]]),
        "study_clips_s": median([n / w for w, _, _ in runs["study"]]),
        "ours_cpu_clips_s": median([n / c for _, c, _ in runs["ours"]]),
        "study_cpu_clips_s": median([n / c for _, c, _ in runs["study"]]),
        "ours_decode_ms": median([1e3 * d / n for _, _, d in runs["ours"]]),
        "speedup": median([s[0] / o[0] for s, o in zip(runs["study"], runs["ours"], strict=True)]),
        "speedup_cpu": median(
            [s[1] / o[1] for s, o in zip(runs["study"], runs["ours"], strict=True)]
        ),
        "match": bool(match.ok),
        "max_zcr_abs": match.zcr_max_abs,
        "max_energy_rel": match.energy_max_rel,
        "max_mel_abs_db": match.mel_max_abs_db,
        "peak_rss_mb": proc_status()["VmHWM"],
    }


def section_bundle(spec: dict) -> dict:
    from ser_worker.audio import load_audio
    from ser_worker.bundle import create_bundle, save_bundle
    from ser_worker.features.study import FeatureSettings, extract, fit_normalizer
    from ser_worker.models.cnn import build_models

    settings = FeatureSettings()
    features = [extract(load_audio(p), settings) for p in spec["clips"]]
    bundle = create_bundle(
        build_models(("cnn1d", "cnn2d"), settings),
        feature_settings=settings,
        normalizer=fit_normalizer(features),
        notes="benchmark bundle: freshly initialised weights (speed does not depend on training)",
    )
    save_bundle(bundle, spec["out"])
    return {"version": bundle.version}


def _import_runtime() -> dict[str, float]:
    """The heavy part of a worker's cold start, timed: librosa JIT warm-up, TF/Keras import."""
    timings = {}
    t = time.perf_counter()
    from ser_worker.service import runtime

    # What a worker child does after the fork (its threads, librosa), here in the foreground.
    runtime.warm_up(background=False)
    timings["warm_up_s"] = time.perf_counter() - t
    t = time.perf_counter()
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    timings["import_tf_s"] = time.perf_counter() - t
    return timings


def section_inference(spec: dict) -> dict:
    timings = _import_runtime()
    import numpy as np
    import tensorflow as tf

    from benchmarks.flops import model_flops
    from ser_worker.audio import load_audio
    from ser_worker.bundle import load_bundle
    from ser_worker.bundle.predict import embed, encoder_vectors, predict_probabilities
    from ser_worker.features.study import batch_inputs, extract, input_1d, input_2d

    batch = spec["batch"]
    t = time.perf_counter()
    bundle = load_bundle(Path(spec["bundle"]))
    timings["load_bundle_s"] = time.perf_counter() - t
    settings, normalizer = bundle.feature_settings, bundle.normalizer
    features = [extract(load_audio(p), settings) for p in spec["clips"]]
    untrimmed = [load_audio(p, trim=False) for p in spec["clips"]]
    t = time.perf_counter()
    vectors = encoder_vectors(bundle, untrimmed[:1])
    timings["encoder_load_s"] = time.perf_counter() - t
    if vectors is not None:
        vectors = embed(untrimmed)
    x1, x2 = batch_inputs(features, settings, normalizer)
    inputs = {"cnn1d": x1, "cnn2d": x2}
    models = bundle.models
    t = time.perf_counter()
    for name, model in models.items():
        model.predict_on_batch(inputs[name][:batch])
    timings["first_predict_s"] = time.perf_counter() - t
    flops = {name: model_flops(model) for name, model in models.items()}
    n = len(features)
    naive_n = min(spec["naive_clips"], n)

    def per_clip_inputs(f):
        return {
            "cnn1d": input_1d(f, settings, normalizer)[None],
            "cnn2d": input_2d(f, settings, normalizer)[None],
        }

    naive_inputs = [per_clip_inputs(f) for f in features[:naive_n]]

    # Consistency: the per-clip loop and the batched path give the same probabilities.
    batched_p = predict_probabilities(
        bundle,
        features[:naive_n],
        encoder_vectors=None if vectors is None else vectors[:naive_n],
        batch_size=batch,
    )
    for name, model in models.items():
        naive_p = np.concatenate([model.predict(x[name], verbose=0) for x in naive_inputs])
        if not np.allclose(naive_p, batched_p[name], atol=1e-4):
            raise AssertionError(f"{name}: per-clip predict disagrees with batched inference")

    a = np.random.default_rng(0).standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32)
    ta = tf.constant(a)
    tf_matmul = tf.function(lambda x: tf.linalg.matmul(x, x))
    tf_matmul(ta).numpy()
    matmul_flops = 2 * MATMUL_N**3

    def matmul_np() -> float:
        a @ a
        t = time.perf_counter()
        for _ in range(4):
            a @ a
        return 4 * matmul_flops / (time.perf_counter() - t)

    def matmul_tf() -> float:
        t = time.perf_counter()
        for _ in range(4):
            out = tf_matmul(ta)
        out.numpy()
        return 4 * matmul_flops / (time.perf_counter() - t)

    def batched(name: str) -> float:
        model, x = models[name], inputs[name]
        t = time.perf_counter()
        for start in range(0, n, batch):
            model.predict_on_batch(x[start : start + batch])
        return n / (time.perf_counter() - t)

    def both_batched() -> float:
        t = time.perf_counter()
        predict_probabilities(bundle, features, encoder_vectors=vectors, batch_size=batch)
        return n / (time.perf_counter() - t)

    def encoder() -> float:
        t = time.perf_counter()
        embed(untrimmed)
        return n / (time.perf_counter() - t)

    def naive() -> dict[str, float]:
        seconds = dict.fromkeys(models, 0.0)
        for x in naive_inputs:
            for name, model in models.items():
                t = time.perf_counter()
                model.predict(x[name], verbose=0)
                seconds[name] += time.perf_counter() - t
        out = {name: naive_n / s for name, s in seconds.items()}
        out["both"] = naive_n / sum(seconds.values())
        return out

    runs: dict[str, list] = {"np": [], "tf": [], "both": [], "naive": []}
    runs.update({name: [] for name in models})
    jobs: list[tuple[str, Callable[[], Any]]] = [
        ("np", matmul_np),
        ("tf", matmul_tf),
        *((name, lambda name=name: batched(name)) for name in models),
        ("both", both_batched),
        ("naive", naive),
        *((("encoder", encoder),) if vectors is not None else ()),
    ]
    runs["encoder"] = []
    for r in range(spec["repeats"]):
        for key, job in jobs[r % len(jobs) :] + jobs[: r % len(jobs)]:
            runs[key].append(job())

    floor = max(median(runs["np"]), median(runs["tf"]))
    result: dict[str, Any] = {
        "clips": n,
        "batch": batch,
        "naive_clips": naive_n,
        "threads": spec["threads"] or os.cpu_count(),
        "cold": timings,
        "matmul_gflop_s": {
            "numpy": median(runs["np"]) / 1e9,
            "tensorflow": median(runs["tf"]) / 1e9,
            "floor": floor / 1e9,
        },
        "models": {},
        "peak_rss_mb": proc_status()["VmHWM"],
    }
    for name in models:
        rate = median(runs[name])
        result["models"][name] = {
            "gflop_per_clip": flops[name] / 1e9,
            "batched_clips_s": rate,
            "naive_clips_s": median([r[name] for r in runs["naive"]]),
            "speedup": median(
                [b / r[name] for b, r in zip(runs[name], runs["naive"], strict=True)]
            ),
            "achieved_gflop_s": rate * flops[name] / 1e9,
            "floor_fraction": rate * flops[name] / floor,
        }
    total_flops = sum(flops.values())
    both = median(runs["both"])
    result["models"]["both"] = {
        "gflop_per_clip": total_flops / 1e9,
        "batched_clips_s": both,
        "naive_clips_s": median([r["both"] for r in runs["naive"]]),
        "speedup": median(
            [b / r["both"] for b, r in zip(runs["both"], runs["naive"], strict=True)]
        ),
        "achieved_gflop_s": both * total_flops / 1e9,
        "floor_fraction": both * total_flops / floor,
    }
    if runs["encoder"]:
        result["encoder_clips_s"] = median(runs["encoder"])
    return result


def section_baseline(spec: dict) -> None:
    """The in-process library call, on command: 'run' times one pass, 'quit' reports memory."""
    _import_runtime()
    from ser_worker.audio import load_audio, trim_silence
    from ser_worker.bundle import load_bundle
    from ser_worker.bundle.predict import predict
    from ser_worker.service import runtime

    bundle = load_bundle(Path(spec["bundle"]))
    limits = runtime.audio_limits()

    def decode_and_predict(clips: list[str]) -> None:
        # As the worker does (ser_worker.service.tasks.inference): decode once, trim for the CNNs.
        untrimmed = [load_audio(path, limits, trim=False) for path in clips]
        waveforms = [trim_silence(y, limits) for y in untrimmed]
        predict(bundle, waveforms, untrimmed=untrimmed, batch_size=spec["batch"])

    decode_and_predict(spec["clips"][:1])
    emit({"ready": True})
    for line in sys.stdin:
        command = line.strip()
        if command in ("run", "warm"):
            # warm: one full batch and a remainder, so that the batch shapes of a run are traced.
            clips = spec["clips"] if command == "run" else spec["clips"][: spec["batch"] + 1]
            t, cpu = time.perf_counter(), time.process_time()
            decode_and_predict(clips)
            emit({"seconds": time.perf_counter() - t, "cpu_s": time.process_time() - cpu})
        elif command == "quit":
            emit({"peak_rss_mb": proc_status()["VmHWM"]})
            return


def section_training(spec: dict) -> dict:
    import numpy as np

    from ser_worker.audio import load_audio
    from ser_worker.training.fit import TrainConfig, train

    memory = PeakMemory()
    labels = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
    train_w = [load_audio(p) for p in spec["train"]]
    val_w = [load_audio(p) for p in spec["val"]]
    # Speed does not depend on the labels; cycling them keeps every class present.
    train_y = [labels[i % 6] for i in range(len(train_w))]
    val_y = [labels[i % 6] for i in range(len(val_w))]
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


class PeakMemory:
    """Samples this process's RSS and anonymous RSS every 20 ms in a thread: VmHWM counts the
    pages of memory-mapped files too (the training cache), which the kernel can drop at will;
    anonymous memory is what the process really holds."""

    def __init__(self) -> None:
        self.peak = {"RssAnon": 0.0, "VmRSS": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            status = proc_status()
            for key in self.peak:
                self.peak[key] = max(self.peak[key], status.get(key, 0.0))
            self._stop.wait(0.02)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return self.peak


def section_training_data(spec: dict) -> dict:
    """The training data path alone (augment, cache, one epoch of batches for each model),
    with many copies: memory that grew with the copies would show here at a size that
    TensorFlow's own memory cannot hide."""
    import numpy as np

    from ser_worker.audio import load_audio
    from ser_worker.features.study import FeatureSettings
    from ser_worker.labels import EMOTIONS
    from ser_worker.training.fit import (
        TrainingBatches,
        augmented_copy,
        balanced_class_weights,
        build_cache,
        extract_all,
        fit_normalizer,
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
    for name in ("cnn1d", "cnn2d"):
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


SECTIONS: dict[str, Callable[[dict], Any]] = {
    "training_data": section_training_data,
    "features": section_features,
    "bundle": section_bundle,
    "inference": section_inference,
    "baseline": section_baseline,
    "training": section_training,
}


# --- orchestration ------------------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SER_")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    env.update(extra)
    return env


SINGLE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "SER_TF_THREADS": "1",
}


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.log = (workdir / "bench.log").open("a")

    def say(self, message: str) -> None:
        print(
            f"[{time.strftime('%H:%M:%S')} load {load_average()[0]:.2f}] {message}",
            file=sys.stderr,
            flush=True,
        )

    def section(self, name: str, spec: dict, env: dict[str, str] | None = None) -> dict:
        spec_path = self.workdir / f"{name}-{uuid.uuid4().hex[:6]}.json"
        spec_path.write_text(json.dumps(spec))
        proc = subprocess.run(
            [sys.executable, __file__, "--section", name, "--spec", str(spec_path)],
            cwd=REPO,
            env=env or child_env(),
            capture_output=True,
            text=True,
        )
        self.log.write(f"== {name}\n{proc.stderr}\n")
        for line in reversed(proc.stdout.splitlines()):
            if line.startswith(TAG):
                return json.loads(line[len(TAG) :])
        raise RuntimeError(f"section {name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")


class Worker:
    """A real `celery worker -P prefork` process group, its log in a file."""

    def __init__(self, env: dict[str, str], concurrency: int, log: Path) -> None:
        self.log = log
        self.concurrency = concurrency
        self.spawned = time.time()
        self.process = subprocess.Popen(
            [
                str(BIN / "celery"),
                "-A",
                "ser_worker",
                "worker",
                "-Q",
                "inference",
                "-c",
                str(concurrency),
                "-P",
                "prefork",
                "-n",
                f"bench-{uuid.uuid4().hex[:6]}@%h",
                "-l",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=REPO,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.ready_at: float | None = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> float:
        deadline = time.time() + timeout
        while " ready." not in self.output():
            if self.process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"worker did not start:\n{self.output()[-4000:]}")
            time.sleep(0.05)
        self.ready_at = time.time()
        return self.ready_at - self.spawned

    def task_seconds(self) -> list[float]:
        return [float(s) for s in re.findall(r"succeeded in ([0-9.]+)s", self.output())]

    def memory(self) -> dict[str, Any]:
        children = child_pids(self.process.pid)
        return {
            "parent_mb": proc_status(self.process.pid).get("VmHWM", float("nan")),
            "children_mb": [proc_status(pid).get("VmHWM", float("nan")) for pid in children],
            "children": children,
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


class Services:
    """A throwaway PostgreSQL database and Redis databases, created here and removed at the end."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.db_name = f"ser_bench_{uuid.uuid4().hex[:10]}"
        self.admin = f"postgresql://{args.pg_user}@{args.pg}/{args.pg_admin_db}"
        self.url = f"postgresql+psycopg://{args.pg_user}@{args.pg}/{self.db_name}"
        self.redis_urls = [f"redis://{args.redis}/{db}" for db in args.redis_dbs]
        self._engine = None

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        """One transaction on one engine for the whole benchmark (ser's get_engine makes a new
        engine, hence a new connection, per call; polling with it would add its own load)."""
        from sqlalchemy import create_engine
        from sqlalchemy.orm import Session

        if self._engine is None:
            self._engine = create_engine(self.url)
        with Session(self._engine, expire_on_commit=False) as session, session.begin():
            yield session

    def __enter__(self) -> Services:
        import psycopg
        import redis

        for url in self.redis_urls:
            redis.Redis.from_url(url, socket_connect_timeout=3).flushdb()
        with psycopg.connect(self.admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        subprocess.run(
            [str(BIN / "alembic"), "upgrade", "head"],
            cwd=REPO,
            env={**child_env(), "SER_DATABASE_URL": self.url},
            check=True,
            capture_output=True,
        )
        return self

    def __exit__(self, *exc) -> None:
        import psycopg
        import redis

        if self._engine is not None:
            self._engine.dispose()
        for url in self.redis_urls:
            with contextlib.suppress(Exception):
                redis.Redis.from_url(url).flushdb()
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def register(self, bundle: bytes, clips: Sequence[Path]) -> None:
        from ser_worker.bundle import read_manifest
        from ser_worker.service import store

        with self.session() as session:
            store.register_version(
                session, bundle, read_manifest(bundle), source="trained", activate=True
            )
        # Blobs stored once up front, so every measured submission uploads the same way.
        with self.session() as session:
            store.store_audio(session, [path.read_bytes() for path in clips])

    def env(self, broker: int, tf_threads: int) -> dict[str, str]:
        extra = {
            "SER_DATABASE_URL": self.url,
            "SER_BROKER_URL": self.redis_urls[broker],
            "SER_DATA_DIR": str(self.workdir / "ser-data"),
            "SER_BATCH_SIZE": str(self.args.batch),
        }
        if tf_threads:
            extra["SER_TF_THREADS"] = str(tf_threads)
        return child_env(**extra)

    def submit(self, paths: Sequence[Path], broker: int, *, wait: bool) -> dict[str, Any]:
        args = [str(BIN / "ser-cli"), "submit", *map(str, paths), "--json", "--force"]
        if wait:
            args.append("--wait")
        started = time.time()
        proc = subprocess.run(
            args, cwd=REPO, env=self.env(broker, 0), capture_output=True, text=True, timeout=1800
        )
        wall = time.time() - started
        if proc.returncode != 0:
            raise RuntimeError(
                f"ser-cli submit failed:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}"
            )
        summary = json.loads(proc.stdout[proc.stdout.index("{") :])
        return {"started": started, "wall": wall, "summary": summary}

    def processed_at(self, submission: str) -> list[float | None]:
        from sqlalchemy import select

        from ser_worker.service.db.models import SubmissionItem

        with self.session() as session:
            rows = session.scalars(
                select(SubmissionItem.processed_at).where(
                    SubmissionItem.submission_id == submission
                )
            ).all()
        return [row.timestamp() if row else None for row in rows]

    def wait_done(self, submission: str, timeout: float = 300) -> list[float]:
        deadline = time.time() + timeout
        while True:
            times = self.processed_at(submission)
            if times and all(t is not None for t in times):
                return times
            if time.time() > deadline:
                raise RuntimeError(f"submission {submission} not processed in {timeout:.0f} s")
            time.sleep(0.05)


def run_service(bench: Bench, bundle: Path, clips: list[Path]) -> dict[str, Any]:
    args = bench.args
    n = len(clips)
    out: dict[str, Any] = {"clips": n, "tf_threads_per_process": args.tf_threads}
    with Services(args, bench.workdir) as services:
        services.register(bundle.read_bytes(), clips)
        workers: dict[int, Worker] = {}
        baseline = None
        try:
            # Cold starts, one worker set at a time: the clip is queued first, then the worker
            # starts; cold start = worker spawn to that clip's result in the database.
            for broker, concurrency in enumerate((1, 2)):
                bench.say(f"cold start of a worker with {concurrency} process(es)")
                queued = [
                    services.submit([clips[i]], broker, wait=False)["summary"]["submission"]
                    for i in range(concurrency)
                ]
                worker = Worker(
                    services.env(broker, args.tf_threads),
                    concurrency,
                    bench.workdir / f"worker-{concurrency}.log",
                )
                workers[concurrency] = worker
                ready_s = worker.wait_ready()
                done = max(max(services.wait_done(s)) for s in queued)
                out[f"cold_{concurrency}"] = {
                    "spawn_to_ready_s": ready_s,
                    "spawn_to_first_result_s": done - worker.spawned,
                    "first_task_s": max(worker.task_seconds() or [float("nan")]),
                }

            bench.say("in-process baseline: starting")
            spec_path = bench.workdir / "baseline.json"
            spec_path.write_text(
                json.dumps(
                    {"bundle": str(bundle), "clips": list(map(str, clips)), "batch": args.batch}
                )
            )
            # Exactly the worker's thread settings: SER_TF_THREADS, applied by runtime.warm_up.
            threads = {"SER_TF_THREADS": str(args.tf_threads)} if args.tf_threads else {}
            baseline = subprocess.Popen(
                [sys.executable, __file__, "--section", "baseline", "--spec", str(spec_path)],
                cwd=REPO,
                env=child_env(**threads),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=(bench.workdir / "baseline.log").open("w"),
                text=True,
                bufsize=1,
            )

            def ask(command: str) -> dict:
                baseline.stdin.write(command + "\n")
                baseline.stdin.flush()
                for line in baseline.stdout:
                    if line.startswith(TAG):
                        return json.loads(line[len(TAG) :])
                raise RuntimeError("baseline process ended early; see baseline.log")

            for line in baseline.stdout:
                if line.startswith(TAG):
                    break
            # Unmeasured warm-up of every contender: Keras traces its predict function again
            # for each new batch shape (the cold-start clips were batches of one).
            bench.say("warm-up round")
            ask("warm")
            warm = clips[: 4 * args.batch]
            for broker in (0, 1):
                services.submit(warm, broker, wait=True)

            runs: dict[str, list[dict]] = {"inproc": [], "w1": [], "w2": []}
            contenders = ["inproc", "w1", "w2"]
            profiler = None
            for r in range(args.service_repeats):
                order = contenders[r % 3 :] + contenders[: r % 3]
                for name in order:
                    bench.say(f"end to end, run {r + 1}/{args.service_repeats}: {name}")
                    if name == "inproc":
                        timing = ask("run")
                        runs[name].append({"wall": timing["seconds"], "cpu_s": timing["cpu_s"]})
                        continue
                    broker = 0 if name == "w1" else 1
                    last = r == args.service_repeats - 1
                    if args.profile and last and name == "w1":
                        profiler = start_profiler(args.profile, workers[1], "worker-1")
                    kids = child_pids(workers[1 if name == "w1" else 2].process.pid)
                    cpu = cpu_seconds(kids)
                    sub = services.submit(clips, broker, wait=True)
                    cpu = cpu_seconds(kids) - cpu
                    if profiler:
                        stop_profiler(profiler)
                        profiler = None
                    status = sub["summary"]["status"]
                    if status.get("done", 0) != n:
                        raise RuntimeError(f"not every clip was processed: {status}")
                    times = [t for t in services.processed_at(sub["summary"]["submission"]) if t]
                    runs[name].append(
                        {
                            "wall": sub["wall"],
                            "first_result_s": min(times) - sub["started"],
                            "last_result_s": max(times) - sub["started"],
                            "worker_cpu_s": cpu,
                        }
                    )
            out["baseline_peak_rss_mb"] = ask("quit")["peak_rss_mb"]
            out["memory"] = {c: w.memory() for c, w in workers.items()}
        finally:
            if baseline is not None and baseline.poll() is None:
                baseline.kill()
                baseline.wait()
            for worker in workers.values():
                worker.stop()

    for name, label in (("inproc", "in_process"), ("w1", "worker_1"), ("w2", "workers_2")):
        out[label] = {
            "clips_s": median([n / run["wall"] for run in runs[name]]),
            "wall_s": median([run["wall"] for run in runs[name]]),
        }
        if name != "inproc":
            out[label]["first_result_s"] = median([run["first_result_s"] for run in runs[name]])
            out[label]["last_result_s"] = median([run["last_result_s"] for run in runs[name]])
            out[label]["worker_cpu_ms_per_clip"] = median(
                [1e3 * run["worker_cpu_s"] / n for run in runs[name]]
            )
            # Where the wall time goes: the CLI's start, upload and enqueueing (plus one task)
            # before the first result; the workers between first and last; the CLI's last poll
            # interval, summary and exit after it.
            out[label]["processing_s"] = median(
                [run["last_result_s"] - run["first_result_s"] for run in runs[name]]
            )
            out[label]["tail_s"] = median(
                [run["wall"] - run["last_result_s"] for run in runs[name]]
            )
            # Worker CPU over the time the workers were busy (first to last result, scaled up by
            # one batch for the first task): 1.0 = one core fully used.
            busy_share = n / max(n - args.batch, 1)
            out[label]["cores_busy"] = median(
                [
                    run["worker_cpu_s"]
                    / ((run["last_result_s"] - run["first_result_s"]) * busy_share)
                    for run in runs[name]
                ]
            )
            # Throughput seen by the workers: submit start to the last result stored, without
            # the CLI's final poll interval and summary.
            out[label]["to_last_result_clips_s"] = median(
                [n / run["last_result_s"] for run in runs[name]]
            )
    # CPU per clip, in-process over the 1-process worker: what the service costs in CPU, a
    # figure that other load on the machine does not move.
    out["in_process"]["cpu_ms_per_clip"] = median(
        [1e3 * run["cpu_s"] / n for run in runs["inproc"]]
    )
    out["cpu_efficiency_1_worker"] = (
        out["in_process"]["cpu_ms_per_clip"] / out["worker_1"]["worker_cpu_ms_per_clip"]
    )
    out["efficiency_1_worker"] = median(
        [b["wall"] / w["wall"] for b, w in zip(runs["inproc"], runs["w1"], strict=True)]
    )
    # The same ratios over the workers' part only (first to last result): what the service
    # costs and gains without the CLI's fixed start, upload and polling.
    out["efficiency_1_worker_processing"] = median(
        [
            b["wall"] * (n - args.batch) / n / (w["last_result_s"] - w["first_result_s"])
            for b, w in zip(runs["inproc"], runs["w1"], strict=True)
        ]
    )
    out["scaling_2_workers_processing"] = median(
        [
            (a["last_result_s"] - a["first_result_s"]) / (b["last_result_s"] - b["first_result_s"])
            for a, b in zip(runs["w1"], runs["w2"], strict=True)
        ]
    )
    out["scaling_2_workers"] = median(
        [a["wall"] / b["wall"] for a, b in zip(runs["w1"], runs["w2"], strict=True)]
    )
    return out


def start_profiler(directory: str, worker: Worker, label: str) -> list[subprocess.Popen]:
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        print("--profile: py-spy not found on PATH; skipping", file=sys.stderr)
        return []
    Path(directory).mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(pid),
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                str(Path(directory) / f"{label}-{pid}.txt"),
                "--nonblocking",
                # Wall clock: TensorFlow computes in its own threads while Python waits.
                "--idle",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for pid in child_pids(worker.process.pid)
    ]


def stop_profiler(profilers: list[subprocess.Popen]) -> None:
    for proc in profilers:
        proc.send_signal(signal.SIGINT)
    for proc in profilers:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


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


def shipped_or_fresh_bundle(bench: Bench, clips: list[Path]) -> tuple[Path, str]:
    shipped = REPO / "ser_worker" / "data" / "default_bundle.zip"
    if shipped.exists():
        return shipped, "shipped default_bundle.zip"
    out = bench.workdir / "bench_bundle.zip"
    bench.say("building a bundle with freshly initialised models")
    bench.section("bundle", {"clips": list(map(str, clips[:8])), "out": str(out)})
    return out, "freshly initialised models"


# --- report -------------------------------------------------------------------------------------


def targets(results: dict) -> dict[str, dict]:
    out = {}
    for key, (op, threshold, description) in TARGETS.items():
        value = results.get(key)
        if value is None:
            continue
        met = {
            ">=": lambda v, t: v >= t,
            "<": lambda v, t: v < t,
            "==": lambda v, t: v == t,
        }[op](value, threshold)
        out[key] = {
            "value": value,
            "target": f"{op} {threshold}",
            "met": bool(met),
            "what": description,
        }
    return out


def print_table(r: dict) -> None:
    meta = r["meta"]
    print(
        f"ser benchmark — {meta['cpus']} CPUs ({meta['cpu']}), {meta['clips']} clips from "
        f"{meta['data']}, median of {meta['repeats']} runs ({meta['service_repeats']} end to end)"
    )
    print(
        f"load average {meta['load_before']} before, {meta['load_after']} after; "
        f"bundle: {meta['bundle']}; {meta['duration_s']:.0f} s in all"
    )
    rows: list[tuple[str, str, str]] = []

    def row(what: str, value: str, note: str = "") -> None:
        rows.append((what, value, note))

    def mark(key: str) -> str:
        t = r["targets"].get(key)
        return "" if t is None else f"target {t['target']}: {'MET' if t['met'] else 'MISSED'}"

    f = r.get("features")
    if f:
        row(
            "1 features, clips/s per core: ours",
            f"{f['ours_clips_s']:.1f}",
            f"decode {f['ours_decode_ms']:.2f} ms/clip of it; cpu-time {f['ours_cpu_clips_s']:.1f}",
        )
        row(
            "  study's formulation",
            f"{f['study_clips_s']:.1f}",
            f"cpu-time {f['study_cpu_clips_s']:.1f}",
        )
        row("  speedup", f"{f['speedup']:.2f}x", mark("features_speedup"))
        row(
            "  same outputs",
            "yes" if f["match"] else "NO",
            f"max |dzcr| {f['max_zcr_abs']:.1g}, energy {f['max_energy_rel']:.1g} rel, "
            f"mel {f['max_mel_abs_db']:.1g} dB",
        )
    i = r.get("inference")
    if i:
        for name in ("cnn1d", "cnn2d", "both"):
            m = i["models"][name]
            row(
                f"2 inference {name}, clips/s batched",
                f"{m['batched_clips_s']:.1f}",
                f"per-clip predict {m['naive_clips_s']:.1f}: {m['speedup']:.1f}x; "
                f"{m['gflop_per_clip']:.3f} GFLOP/clip = {m['achieved_gflop_s']:.0f} GFLOP/s",
            )
        if "encoder_clips_s" in i:
            row(
                "2 speech encoder, clips/s",
                f"{i['encoder_clips_s']:.1f}",
                f"vectors of the untrimmed clips; loaded in {i['cold']['encoder_load_s']:.1f} s",
            )
        mm = i["matmul_gflop_s"]
        row(
            "  matmul 2048^2 f32, GFLOP/s",
            f"{mm['floor']:.0f}",
            f"numpy {mm['numpy']:.0f}, tensorflow {mm['tensorflow']:.0f} ({i['threads']} threads)",
        )
        row(
            "  batched speedup (both)",
            f"{r['batch_inference_speedup']:.1f}x",
            mark("batch_inference_speedup"),
        )
        row(
            "  compute floor fraction (both)",
            f"{r['compute_floor_fraction']:.2f}",
            f"cnn2d {i['models']['cnn2d']['floor_fraction']:.2f}, "
            f"cnn1d {i['models']['cnn1d']['floor_fraction']:.2f}",
        )
    s = r.get("service")
    if s:
        row(
            "3 end to end, clips/s: in-process",
            f"{s['in_process']['clips_s']:.1f}",
            f"load_audio + predict, TF threads {s['tf_threads_per_process']}; "
            f"CPU {s['in_process']['cpu_ms_per_clip']:.1f} ms/clip",
        )
        for key, label in (("worker_1", "1 worker process"), ("workers_2", "2 worker processes")):
            w = s[key]
            row(
                f"  ser-cli submit --wait, {label}",
                f"{w['clips_s']:.1f}",
                f"first result {w['first_result_s']:.2f} s, last {w['last_result_s']:.2f} s, "
                f"wall {w['wall_s']:.2f} s",
            )
            row(
                "",
                "",
                f"  = {w['first_result_s']:.2f} s CLI start/upload/enqueue + first task, "
                f"{w['processing_s']:.2f} s workers, {w['tail_s']:.2f} s CLI poll/summary; "
                f"worker CPU {w['worker_cpu_ms_per_clip']:.1f} ms/clip, "
                f"{w['cores_busy']:.2f} cores busy",
            )
        row(
            "  service efficiency, 1 worker",
            f"{r['service_efficiency_1_worker']:.2f}",
            mark("service_efficiency_1_worker"),
        )
        row("  scaling, 2 workers / 1", f"{r['scaling_2_workers']:.2f}x", mark("scaling_2_workers"))
        row(
            "  the same, workers' part only",
            f"{s['efficiency_1_worker_processing']:.2f} / {s['scaling_2_workers_processing']:.2f}x",
            "first to last result, without the CLI's start, upload and polling",
        )
        row(
            "  CPU per clip, in-process / worker",
            f"{s['cpu_efficiency_1_worker']:.2f}",
            "the service's CPU overhead per clip, whatever else runs on the machine",
        )
        row(
            "  time to first result (1 worker)",
            f"{r['time_to_first_result_s']:.2f} s",
            "submit start to first clip stored",
        )
        c1 = s["cold_1"]
        row(
            "  worker cold start",
            f"{r['worker_cold_start_s']:.2f} s",
            f"spawn→ready {c1['spawn_to_ready_s']:.2f} s, first task {c1['first_task_s']:.2f} s; "
            + mark("worker_cold_start_s"),
        )
        row(
            "  2-process worker cold start",
            f"{s['cold_2']['spawn_to_first_result_s']:.2f} s",
            "both children warming up at once",
        )
        if i:
            cold = i["cold"]
            row(
                "  cold start parts (in process)",
                "",
                f"librosa warm-up {cold['warm_up_s']:.2f} s, TF/Keras import "
                f"{cold['import_tf_s']:.2f} s, bundle load {cold['load_bundle_s']:.2f} s, "
                f"first predict {cold['first_predict_s']:.2f} s",
            )
    t = r.get("training")
    if t:
        zero, two = t["copies_0"], t["copies_2"]
        for name, secs in zero["seconds_per_epoch"].items():
            row(
                f"4 training {name}, s/epoch",
                f"{secs:.2f}",
                f"{zero['samples_per_epoch']} samples; "
                f"{t['seconds_per_1000_samples'][name]:.1f} s per 1000 samples",
            )
        row(
            "  peak RSS, 0 / 2 augmented copies",
            f"{zero['peak_rss_mb']:.0f} / {two['peak_rss_mb']:.0f} MB",
            f"anon {zero['peak_anon_mb']:.0f} / {two['peak_anon_mb']:.0f} MB; disk cache "
            f"{zero['cache_mb']:.0f} / {two['cache_mb']:.0f} MB; "
            + "TensorFlow's allocator moves these by up to ~150 MB run to run",
        )
    if s:
        # Keyed by worker concurrency; JSON turns the keys into strings.
        mem = {int(k): v for k, v in s["memory"].items()}
        row(
            "5 peak RSS per worker process",
            f"{r['worker_rss_mb']:.0f} MB",
            f"1-proc worker {max(mem[1]['children_mb']):.0f}, 2-proc "
            + "/".join(f"{m:.0f}" for m in mem[2]["children_mb"])
            + f", celery parent {mem[1]['parent_mb']:.0f}; "
            + mark("worker_rss_mb"),
        )
        row("  peak RSS, in-process baseline", f"{s['baseline_peak_rss_mb']:.0f} MB")
    if t:
        row(
            f"  data path RAM, 0 / {t['data_copies']} copies",
            f"+{t['data_anon_growth_mb']:.0f} MB",
            f"for +{t['data_copies_mb']:.0f} MB of augmented inputs (kept on disk); "
            + mark("training_data_growth_fraction"),
        )
        row(
            "  peak RSS per training job",
            f"{r['training_peak_rss_mb']:.0f} MB",
            f"{t['copies_2']['train_clips']} clips x 3, {t['copies_2']['epochs']} epochs",
        )
    width = max(len(a) for a, _, _ in rows)
    vwidth = max(len(b) for _, b, _ in rows)
    for what, value, note in rows:
        print(f"{what:<{width}}  {value:>{vwidth}}  {note}".rstrip())
    missed = [k for k, t in r["targets"].items() if not t["met"]]
    print("targets: " + ("all met" if not missed else "missed: " + ", ".join(missed)))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of clips (recursive)")
    p.add_argument("--clips", type=int, default=DEFAULT_CLIPS, help="clips per measurement")
    p.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="runs of each contender")
    p.add_argument("--service-repeats", type=int, default=DEFAULT_SERVICE_REPEATS)
    p.add_argument("--batch", type=int, default=int(os.environ.get("SER_BATCH_SIZE", 16)))
    p.add_argument(
        "--naive-clips",
        type=int,
        default=NAIVE_CLIPS,
        help="clips in the per-clip model.predict loop",
    )
    p.add_argument(
        "--tf-threads",
        type=int,
        default=1,
        help="SER_TF_THREADS of each worker process and the in-process baseline",
    )
    p.add_argument("--train-clips", type=int, default=TRAIN_CLIPS)
    p.add_argument("--train-epochs", type=int, default=TRAIN_EPOCHS)
    p.add_argument("--data-clips", type=int, default=DATA_CLIPS)
    p.add_argument("--data-copies", type=int, default=DATA_COPIES)
    p.add_argument("--skip-service", action="store_true")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--skip-features", action="store_true")
    p.add_argument("--skip-inference", action="store_true")
    p.add_argument("--inference-clips", type=int, default=INFERENCE_CLIPS)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--profile", help="py-spy raw profiles of the 1-process worker go here")
    p.add_argument("--pg", default="127.0.0.1:5432")
    p.add_argument("--pg-user", default=os.environ.get("PGUSER") or "postgres")
    p.add_argument("--pg-admin-db", default="test")
    p.add_argument("--redis", default="127.0.0.1:6379")
    p.add_argument(
        "--redis-dbs",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[13, 12],
        help="two Redis database indexes (1-process and 2-process worker)",
    )
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    p.add_argument("--report", type=Path, help="print the table of a saved --json output")
    p.add_argument("--section", help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.section:
        result = SECTIONS[args.section](json.loads(Path(args.spec).read_text()))
        if result is not None:
            emit(result)
        return 0
    if args.report:
        print_table(json.loads(Path(args.report).read_text()))
        return 0

    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="ser-bench-"))
    bench = Bench(args, workdir)
    results: dict[str, Any] = {}
    load_before = load_average()
    finished = False
    try:
        clips = select_clips(args.data, args.clips)
        if not args.skip_features:
            bench.say(f"features: {len(clips)} clips, study's formulation vs ours, one core")
            features = bench.section(
                "features",
                {"clips": list(map(str, clips)), "repeats": args.repeats},
                child_env(**SINGLE_THREAD),
            )
            results["features"] = features
            # Clips load_audio rejects (too short after trimming...) would fail in the service.
            clips = [p for p in clips if str(p) not in features["rejected"]]
        bundle, bundle_source = shipped_or_fresh_bundle(bench, clips)

        if not args.skip_inference:
            bench.say("inference: batched vs per-clip predict, matmul floor, all cores")
            results["inference"] = bench.section(
                "inference",
                {
                    "bundle": str(bundle),
                    "clips": list(map(str, clips[: args.inference_clips])),
                    "repeats": args.repeats,
                    "batch": args.batch,
                    "naive_clips": args.naive_clips,
                    "threads": 0,
                },
            )
        if not args.skip_service:
            results["service"] = run_service(bench, bundle, clips)
        if not args.skip_training:
            results["training"] = run_training(bench, clips)
        finished = True
    finally:
        if finished and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work folder (logs): {workdir}", file=sys.stderr)

    results.update(summary_keys(results))
    results["targets"] = targets(results)
    results["meta"] = {
        "cpus": os.cpu_count(),
        "cpu": cpu_name(),
        "data": str(args.data),
        "clips": len(clips),
        "repeats": args.repeats,
        "service_repeats": args.service_repeats,
        "batch": args.batch,
        "bundle": bundle_source,
        "load_before": load_before,
        "load_after": load_average(),
        "duration_s": time.time() - started,
        "python": platform.python_version(),
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)
    return 0


def summary_keys(r: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "features" in r:
        out["features_speedup"] = r["features"]["speedup"]
        out["features_match"] = r["features"]["match"]
    if "inference" in r:
        both = r["inference"]["models"]["both"]
        out["batch_inference_speedup"] = both["speedup"]
        out["compute_floor_fraction"] = both["floor_fraction"]
        out["inference_clips_s"] = both["batched_clips_s"]
    if "service" in r:
        s = r["service"]
        out["service_efficiency_1_worker"] = s["efficiency_1_worker"]
        out["scaling_2_workers"] = s["scaling_2_workers"]
        out["time_to_first_result_s"] = s["worker_1"]["first_result_s"]
        out["worker_cold_start_s"] = s["cold_1"]["spawn_to_first_result_s"]
        out["worker_rss_mb"] = max(
            max(m["children_mb"], default=float("nan")) for m in s["memory"].values()
        )
    if "training" in r:
        t = r["training"]
        out["training_seconds_per_epoch"] = t["copies_0"]["seconds_per_epoch"]
        out["training_peak_rss_mb"] = max(
            t["copies_0"]["peak_rss_mb"], t["copies_2"]["peak_rss_mb"]
        )
        out["training_memory_growth_mb"] = t["memory_growth_mb"]
        out["training_data_growth_fraction"] = t["data_anon_growth_mb"] / t["data_copies_mb"]
    return out


if __name__ == "__main__":
    sys.exit(main())
