#!/usr/bin/env python
"""Throughput, latency and memory of ser on this machine, as one table (or one JSON object).

    python benchmarks/run.py [--data DIR] [--clips N] [--repeats K] [--service-repeats K]
                             [--skip-service] [--skip-training] [--json] [--profile DIR]
    python benchmarks/run.py --report saved.json     # the table of an earlier --json run

--profile writes py-spy profiles (wall clock, raw format) of the 1-process worker's last
measured run; it needs `py-spy` on PATH. How long a run takes and what it measured on this
project's machines: docs/RESULTS.md and the README's Performance section.

Everything is measured in ONE invocation, and within each section the contenders alternate
run by run, so ratios hold on a noisy machine; every figure is the median of the runs and every
ratio the median of the per-run ratios of contenders measured back to back. Each section runs in
a child process of its own (this file with --section), so that one section's imports, threads
and memory do not colour the next one's figures.

1. Features, per core (benchmarks/features.py).
2. Inference in one process with all cores, and the compute floor (benchmarks/inference.py).
3. End to end through Redis, PostgreSQL and real Celery workers (benchmarks/service.py, on the
   services benchmarks/harness.py starts, as the integration tests do).
3b. Hosts: 1 and 2 worker hosts in network namespaces, and a link cut (benchmarks/hosts.py;
   skipped with its reason where `ip netns` is not permitted).
4. Training: seconds per epoch, memory with augmented copies (benchmarks/training.py).
5. Peak RSS (VmHWM) per worker process, in-process baseline and training job
   (benchmarks/memory.py reads them; the table is benchmarks/report.py).

Services: PostgreSQL at --pg (a throwaway database is created from the admin database and
dropped at the end), Redis at --redis (two database indexes, flushed before and after).
Clips: --data, by default the corpora in ../shared/data (a clone has only the few committed
test clips: `--data tests/corpus --clips 72` runs on those).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# Run as a script, Python puts benchmarks/ itself first on the path, where these module names
# (report, service, ...) would shadow any installed module of the same name: the repository
# root takes its place, so that `benchmarks.*` is the one way in.
if sys.path and Path(sys.path[0]).resolve() == REPO / "benchmarks":
    sys.path[0] = str(REPO)
elif str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import features, hosts, inference, service, training  # noqa: E402
from benchmarks.harness import SINGLE_THREAD, Bench, child_env, emit, load_average  # noqa: E402
from benchmarks.report import print_table, summary_keys, targets  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data"
AUDIO_SUFFIXES = {".flac", ".wav", ".ogg", ".mp3"}
DEFAULT_CLIPS = 512
DEFAULT_REPEATS = 5
DEFAULT_SERVICE_REPEATS = 3
NAIVE_CLIPS = 24
INFERENCE_CLIPS = 128  # eight batches: per-clip rates do not need more

SECTIONS: dict[str, Callable[[dict], Any]] = {
    "training_data": training.section_training_data,
    "features": features.section_features,
    "bundle": inference.section_bundle,
    "inference": inference.section_inference,
    "baseline": service.section_baseline,
    "training": training.section_training,
}


def select_clips(data: Path, n: int) -> list[Path]:
    """n audio files spread evenly over the sorted listing (all corpora, speakers, emotions)."""
    files = sorted(p for p in data.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise SystemExit(f"no audio files under {data}")
    if n >= len(files):
        return files
    step = len(files) / n
    return [files[int(i * step)] for i in range(n)]


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
    p.add_argument("--train-clips", type=int, default=training.TRAIN_CLIPS)
    p.add_argument("--train-epochs", type=int, default=training.TRAIN_EPOCHS)
    p.add_argument("--data-clips", type=int, default=training.DATA_CLIPS)
    p.add_argument("--data-copies", type=int, default=training.DATA_COPIES)
    p.add_argument("--skip-service", action="store_true")
    p.add_argument("--skip-training", action="store_true")
    p.add_argument("--skip-features", action="store_true")
    p.add_argument("--skip-inference", action="store_true")
    p.add_argument("--skip-hosts", action="store_true", help="no network-namespace hosts section")
    # 96 clips took one host ~6 s, 1.3 s of it the CLI's start, upload and polling, which a
    # second host does not shorten: the ratio then measured the CLI more than the hosts.
    p.add_argument("--hosts-clips", type=int, default=256, help="clips per hosts measurement")
    p.add_argument("--hosts-batch", type=int, default=8, help="SER_BATCH_SIZE of the hosts runs")
    p.add_argument("--hosts-repeats", type=int, default=2)
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
        default=[13, 12, 11],
        help="three Redis database indexes (1-process, 2-process and earlier-path worker)",
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
        saved = json.loads(Path(args.report).read_text())
        print_table(saved)
        hosts.print_rows(saved)
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
        bundle, bundle_source = inference.shipped_or_fresh_bundle(bench, clips)

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
            results["service"] = service.run_service(bench, bundle, clips)
        if not args.skip_hosts:
            results["hosts"] = hosts.run_hosts(bench, bundle, clips)
        if not args.skip_training:
            results["training"] = training.run_training(bench, clips)
        finished = True
    finally:
        if finished and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work folder (logs): {workdir}", file=sys.stderr)

    results.update(summary_keys(results))
    results.update(hosts.summary_keys(results))
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
        hosts.print_rows(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
