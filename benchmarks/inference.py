"""Section 2, inference in one process with all cores: each model and both together batched
against a per-clip ``model.predict`` loop, the speech encoder's default runtime against the
CTranslate2 path it replaced (interleaved in the same repeats, so load on a shared machine
weighs on both alike), and the machine's matrix multiply rate as the compute floor. Also the
heavy parts of a cold start, timed."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.harness import REPO, median
from benchmarks.memory import proc_status
from ser_worker.labels import CNN1D, CNN2D, MODEL_NAMES, POOL_ALL

if TYPE_CHECKING:
    from benchmarks.harness import Bench

MATMUL_N = 2048


def section_bundle(spec: dict) -> dict:
    from ser_worker.audio import load_audio
    from ser_worker.bundle import create_bundle, save_bundle
    from ser_worker.features.study import FeatureSettings, extract, fit_normalizer
    from ser_worker.models.cnn import build_models

    settings = FeatureSettings()
    features = [extract(load_audio(p), settings) for p in spec["clips"]]
    bundle = create_bundle(
        build_models(MODEL_NAMES, settings),
        feature_settings=settings,
        normalizer=fit_normalizer(features),
        notes="benchmark bundle: freshly initialised weights (speed does not depend on training)",
    )
    save_bundle(bundle, spec["out"])
    return {"version": bundle.version}


def import_runtime() -> dict[str, float]:
    """Parts of a worker's cold start, timed: the feature warm-up, and TF/Keras' import (which a
    worker pays only for a bundle without ONNX exports of its CNNs)."""
    timings = {}
    t = time.perf_counter()
    from ser_worker.service import runtime

    # What a worker child does after the fork (its threads, the features), in the foreground.
    runtime.warm_up(background=False)
    timings["warm_up_s"] = time.perf_counter() - t
    t = time.perf_counter()
    import keras  # noqa: F401
    import tensorflow  # noqa: F401

    timings["import_tf_s"] = time.perf_counter() - t
    return timings


def section_inference(spec: dict) -> dict:
    timings = import_runtime()
    import numpy as np
    import tensorflow as tf

    from benchmarks.flops import model_flops
    from ser_worker.audio import load_audio
    from ser_worker.bundle import load_bundle
    from ser_worker.bundle.core import embed, encoder_vectors, predict_probabilities
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
        vectors = encoder_vectors(bundle, untrimmed)
        old_encoder, encoder_cost = old_encoder_path(bundle, untrimmed)
    x1, x2 = batch_inputs(features, settings, normalizer)
    inputs = {CNN1D: x1, CNN2D: x2}
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
            CNN1D: input_1d(f, settings, normalizer)[None],
            CNN2D: input_2d(f, settings, normalizer)[None],
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

    def encoder() -> dict[str, float]:
        """Both encoder paths back to back, in alternating order, so their ratio is taken
        under the same load."""
        rates = {}
        # The two runtimes alone: both pool every frame alike, without the speech detector a
        # bundle pooling "all+soft" also runs (the same for either runtime).
        paths = [
            ("new", lambda: embed(untrimmed, pooling=POOL_ALL)),
            ("old", lambda: old_encoder.embed(untrimmed)),
        ]
        for key, path in paths if len(runs["encoder"]) % 2 == 0 else paths[::-1]:
            t = time.perf_counter()
            path()
            rates[key] = n / (time.perf_counter() - t)
        return rates

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
        new = median([r["new"] for r in runs["encoder"]])
        old = median([r["old"] for r in runs["encoder"]])
        result["encoder_clips_s"] = new
        result["encoder"] = {
            "backend": "onnxruntime",
            "clips_s": new,
            "gflop_per_clip": encoder_cost["new"] / 1e9,
            "achieved_gflop_s": new * encoder_cost["new"] / 1e9,
            "floor_fraction": new * encoder_cost["new"] / floor,
            "old_backend": "ctranslate2",
            "old_clips_s": old,
            "old_gflop_per_clip": encoder_cost["old"] / 1e9,
            "old_floor_fraction": old * encoder_cost["old"] / floor,
            "speedup": median([r["new"] / r["old"] for r in runs["encoder"]]),
            "windows_per_clip": encoder_cost["windows"],
        }
    return result


def old_encoder_path(bundle, clips) -> tuple[Any, dict[str, float]]:
    """The CTranslate2 encoder (one model per pooled block) beside the default, and the FLOPs
    per clip of each on these clips: 6 blocks and one stem per window for the default, the
    pooled blocks' sum and one stem per pooled block for CTranslate2."""
    from benchmarks.flops import encoder_window_flops
    from ser_worker.config import get_settings
    from ser_worker.models.encoder import (
        CTRANSLATE2,
        HOP,
        LAYERS,
        WINDOW_FRAMES,
        load_encoder,
    )

    layers = tuple(bundle.encoder_layers or LAYERS)
    old = load_encoder(layers, get_settings().tf_threads, backend=CTRANSLATE2)
    windows = sum(max(1, -(-len(y) // (WINDOW_FRAMES * HOP))) for y in clips) / len(clips)
    cost = {
        "new": windows * encoder_window_flops(WINDOW_FRAMES, max(layers)),
        "old": windows * encoder_window_flops(WINDOW_FRAMES, sum(layers), stems=len(layers)),
        "windows": windows,
    }
    return old, cost


def shipped_or_fresh_bundle(bench: Bench, clips: list[Path]) -> tuple[Path, str]:
    shipped = REPO / "ser_worker" / "data" / "default_bundle.zip"
    if shipped.exists():
        return shipped, "shipped default_bundle.zip"
    out = bench.workdir / "bench_bundle.zip"
    bench.say("building a bundle with freshly initialised models")
    bench.section("bundle", {"clips": list(map(str, clips[:8])), "out": str(out)})
    return out, "freshly initialised models"
