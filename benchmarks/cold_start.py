"""A worker's cold start alone, repeated: a real prefork Celery worker (one process) spawned
after a clip was queued, timed to that clip's result in the database, exactly as the service
section measures ``worker_cold_start_s`` (benchmarks/service.py), without the rest of it.

    python -m benchmarks.cold_start [--repeats 5] [--data tests/data] [--compare-with DIR] [--json]

Kinds of start, alternating run by run (on a loaded machine only their medians compare):
- ``fresh``: a new SER_DATA_DIR each time, nothing cached in it (a new host; what the service
  section's first cold start is);
- ``restart``: the SER_DATA_DIR of earlier starts (a worker restarted where it ran before: the
  speech encoder's graph is read from its cache there);
- ``other`` (with --compare-with DIR): the code of another checkout, e.g. ``git archive`` of an
  earlier commit unpacked in DIR, on a fresh SER_DATA_DIR, with this virtualenv.
One unmeasured round of every kind comes first, so that each finds the same files in the page
cache. Services as in benchmarks/run.py: PostgreSQL at --pg, Redis at --redis.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import REPO, Bench, Worker, flush_redis, load_average, median
from benchmarks.service import Services

SHIPPED_BUNDLE = REPO / "ser_worker" / "data" / "default_bundle.zip"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5, help="measured starts of each kind")
    p.add_argument("--data", type=Path, default=REPO / "tests" / "data", help="clips (recursive)")
    p.add_argument("--compare-with", type=Path, help="another checkout's root: kind 'other'")
    p.add_argument("--tf-threads", type=int, default=1, help="SER_TF_THREADS, as in run.py")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--pg", default="127.0.0.1:5432")
    p.add_argument("--pg-user", default=os.environ.get("PGUSER") or "postgres")
    p.add_argument("--pg-admin-db", default="test")
    p.add_argument("--redis", default="127.0.0.1:6379")
    p.add_argument("--redis-db", type=int, default=11)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--keep", action="store_true", help="keep the work folder (worker logs)")
    args = p.parse_args(argv)
    args.redis_dbs = [args.redis_db]
    return args


def one_start(
    services: Services, clip: Path, env: dict[str, str], log: Path, cwd: Path
) -> dict[str, float]:
    # A task the last worker ran but had not acknowledged when it was stopped comes back to the
    # next one: emptied, so that each worker's first task is the clip it is timed on.
    flush_redis(services.redis_urls[0])
    queued = services.submit([clip], 0, wait=False)["summary"]["submission"]
    worker = Worker(env, log, cwd=cwd)
    try:
        ready_s = worker.wait_ready()
        done = max(services.wait_done(queued))
        return {
            "spawn_to_ready_s": ready_s,
            "spawn_to_first_result_s": done - worker.spawned,
            "first_task_s": max(worker.task_seconds() or [float("nan")]),
        }
    finally:
        worker.stop()


def measure(args: argparse.Namespace, workdir: Path, say) -> dict[str, Any]:
    clips = sorted(p for p in args.data.rglob("*") if p.suffix in {".flac", ".wav"})
    kinds = ["fresh", "restart"] + (["other"] if args.compare_with else [])
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    loads = []
    with Services(args, workdir) as services:
        services.register(SHIPPED_BUNDLE.read_bytes(), clips)
        for r in range(-1, args.repeats):
            order = kinds[r % len(kinds) :] + kinds[: r % len(kinds)]
            for kind in order:
                data_dir = workdir / ("kept" if kind == "restart" else f"{kind}-{r + 1}")
                env = services.env(0, args.tf_threads) | {"SER_DATA_DIR": str(data_dir)}
                code = args.compare_with.resolve() if kind == "other" else REPO
                env["PYTHONPATH"] = str(code)
                clip = clips[(r + 1) % len(clips)]
                log = workdir / f"worker-{kind}-{r + 1}.log"
                timing = one_start(services, clip, env, log, code)
                if r >= 0:  # round -1 warms the page cache and the restart kind's data dir
                    runs[kind].append(timing)
                    loads.append(load_average()[0])
                say(f"round {r + 1}/{args.repeats} {kind}: {timing}")
    out: dict[str, Any] = {
        kind: {
            key: median([run[key] for run in runs[kind]])
            for key in ("spawn_to_first_result_s", "spawn_to_ready_s", "first_task_s")
        }
        | {"all_spawn_to_first_result_s": [run["spawn_to_first_result_s"] for run in runs[kind]]}
        for kind in kinds
    }
    if args.compare_with:
        # Starts of one round ran back to back: their differences carry less of the load's drift.
        for kind in ("fresh", "restart"):
            out[kind]["median_difference_to_other_s"] = median(
                [
                    a["spawn_to_first_result_s"] - b["spawn_to_first_result_s"]
                    for a, b in zip(runs[kind], runs["other"], strict=True)
                ]
            )
    out["meta"] = {
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
        "load_1min_during": [min(loads), median(loads), max(loads)],
        "compare_with": str(args.compare_with) if args.compare_with else None,
    }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="ser-cold-"))
    bench = Bench(args, workdir)
    try:
        result = measure(args, workdir, bench.say)
    finally:
        if args.keep:
            print(f"work folder (logs): {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for kind, figures in result.items():
        if kind != "meta":
            runs = ", ".join(f"{s:.2f}" for s in figures["all_spawn_to_first_result_s"])
            versus = figures.get("median_difference_to_other_s")
            print(
                f"{kind:8} cold start {figures['spawn_to_first_result_s']:.2f} s median "
                f"(ready {figures['spawn_to_ready_s']:.2f} s, first task "
                f"{figures['first_task_s']:.2f} s"
                + (f", {versus:+.2f} s against other round by round" if versus is not None else "")
                + f"); runs: {runs}"
            )
    load = result["meta"]["load_1min_during"]
    print(
        f"load average (1 min) during: min {load[0]:.2f}, median {load[1]:.2f}, max {load[2]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
