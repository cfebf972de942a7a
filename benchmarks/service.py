"""Section 3, end to end: ``ser-cli submit PATHS --wait --json --force`` through Redis,
PostgreSQL and real prefork Celery workers with 1 and with 2 worker processes, against the
in-process library call with the same batch and thread settings, and against a 1-process worker
on the earlier path (benchmarks/old_path.py). The three worker sets run side by side on three
Redis databases, so that the four contenders can alternate run by run."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.harness import (
    BIN,
    REPO,
    TAG,
    Worker,
    child_env,
    emit,
    flush_redis,
    median,
    scratch_database,
)
from benchmarks.inference import import_runtime
from benchmarks.memory import child_pids, cpu_seconds, proc_status
from benchmarks.profiling import start_profiler, stop_profiler

if TYPE_CHECKING:
    import argparse

    from benchmarks.harness import Bench

OLD_PATH = "old_path"  # the earlier path's worker, beside the 1- and 2-process ones


def section_baseline(spec: dict) -> None:
    """The in-process library call, on command: 'run' times one pass, 'quit' reports memory."""
    import_runtime()
    from ser_worker.audio import load_audio, trim_silence
    from ser_worker.bundle import load_bundle
    from ser_worker.bundle.core import predict_waveforms as predict
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


class Services:
    """A throwaway PostgreSQL database and two Redis databases, emptied and removed at the end."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.redis_urls = [f"redis://{args.redis}/{db}" for db in args.redis_dbs]
        self.url = ""
        self._database = contextlib.ExitStack()

    def session(self) -> contextlib.AbstractContextManager[Any]:
        from ser_worker.service.db.session import session_scope

        return session_scope(self.url)

    def __enter__(self) -> Services:
        for url in self.redis_urls:
            flush_redis(url)
        self.url = self._database.enter_context(
            scratch_database(
                self.args.pg, self.args.pg_user, admin_db=self.args.pg_admin_db, prefix="ser_bench"
            )
        )
        return self

    def __exit__(self, *exc) -> None:
        from ser_worker.service.db.session import get_engine

        get_engine(self.url).dispose()
        for url in self.redis_urls:
            with contextlib.suppress(Exception):
                flush_redis(url)
        self._database.close()

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
        workers: dict[int | str, Worker] = {}
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
                    bench.workdir / f"worker-{concurrency}.log",
                    concurrency=concurrency,
                )
                workers[concurrency] = worker
                ready_s = worker.wait_ready()
                done = max(max(services.wait_done(s)) for s in queued)
                out[f"cold_{concurrency}"] = {
                    "spawn_to_ready_s": ready_s,
                    "spawn_to_first_result_s": done - worker.spawned,
                    "first_task_s": max(worker.task_seconds() or [float("nan")]),
                }

            # The path before ONNX Runtime took the encoder and the CNNs (benchmarks/old_path.py),
            # one process, on a broker of its own: its cold start is not a target, so not timed.
            bench.say("a worker on the earlier path (CTranslate2 encoder, Keras CNNs)")
            old_path = Worker(
                services.env(2, args.tf_threads),
                bench.workdir / "worker-old-path.log",
                app="benchmarks.old_path",
            )
            workers[OLD_PATH] = old_path
            old_path.wait_ready()

            bench.say("in-process baseline: starting")
            spec = {"bundle": str(bundle), "clips": list(map(str, clips)), "batch": args.batch}
            # Exactly the worker's thread settings: SER_TF_THREADS, applied by runtime.warm_up.
            threads = {"SER_TF_THREADS": str(args.tf_threads)} if args.tf_threads else {}
            baseline = subprocess.Popen(
                bench.command("baseline", spec),
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
            for broker in (0, 1, 2):
                services.submit(warm, broker, wait=True)

            contenders = ["inproc", "w1", "w2", "old1"]
            runs: dict[str, list[dict]] = {name: [] for name in contenders}
            profiler = None
            for r in range(args.service_repeats):
                order = contenders[r % 4 :] + contenders[: r % 4]
                for name in order:
                    bench.say(f"end to end, run {r + 1}/{args.service_repeats}: {name}")
                    if name == "inproc":
                        timing = ask("run")
                        runs[name].append({"wall": timing["seconds"], "cpu_s": timing["cpu_s"]})
                        continue
                    broker, key = {"w1": (0, 1), "w2": (1, 2), "old1": (2, OLD_PATH)}[name]
                    last = r == args.service_repeats - 1
                    if args.profile and last and name == "w1":
                        profiler = start_profiler(args.profile, workers[1], "worker-1")
                    kids = child_pids(workers[key].process.pid)
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
            out["memory"] = {c: w.memory() for c, w in workers.items() if c != OLD_PATH}
            out["old_path_memory"] = old_path.memory()
        finally:
            if baseline is not None and baseline.poll() is None:
                baseline.kill()
                baseline.wait()
            for worker in workers.values():
                worker.stop()

    out.update(summarise(runs, n, args.batch))
    return out


def summarise(runs: dict[str, list[dict]], n: int, batch: int) -> dict[str, Any]:
    """The medians and ratios of the measured runs of the three contenders (n clips each)."""
    out: dict[str, Any] = {}
    labels = (
        ("inproc", "in_process"),
        ("w1", "worker_1"),
        ("w2", "workers_2"),
        ("old1", "old_path_worker_1"),
    )
    for name, label in labels:
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
            busy_share = n / max(n - batch, 1)
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
            b["wall"] * (n - batch) / n / (w["last_result_s"] - w["first_result_s"])
            for b, w in zip(runs["inproc"], runs["w1"], strict=True)
        ]
    )
    out["scaling_2_workers_processing"] = median(
        [
            (a["last_result_s"] - a["first_result_s"]) / (b["last_result_s"] - b["first_result_s"])
            for a, b in zip(runs["w1"], runs["w2"], strict=True)
        ]
    )
    # The product's worker against one on the earlier path, each with 1 process, same clips.
    out["speedup_1_worker_vs_old_path"] = median(
        [old["wall"] / w["wall"] for old, w in zip(runs["old1"], runs["w1"], strict=True)]
    )
    out["scaling_2_workers"] = median(
        [a["wall"] / b["wall"] for a, b in zip(runs["w1"], runs["w2"], strict=True)]
    )
    return out
