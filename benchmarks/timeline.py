"""Timelines at scale: one long recording (real clips joined with pauses) through
``ser-cli submit --timeline --wait`` on real Redis, PostgreSQL and prefork workers with 1 and
with 2 worker processes, one after the other in one run (pairs alternate which goes first
with --repeats); the median ratio of their wall times, the
workers' peak memory, and the stored audio per recorded hour.

    python -m benchmarks.timeline --data ../shared/data --minutes 60 --json

The 2-process figure only means something on a machine with two cores free for the workers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks.harness import BIN, REPO, Worker, child_env, flush_redis, scratch_database
from benchmarks.memory import child_pids, cpu_seconds
from benchmarks.recordings import join_clips, wav_bytes
from ser_worker.config import Settings
from ser_worker.labels import SAMPLE_RATE


def build_recording(data: Path, minutes: float, path: Path, seed: int = 0) -> float:
    from ser_worker.datasets import load_dataset

    clips = [clip.path for clip in load_dataset(data).clips]
    signal, joined = join_clips(clips[:120], seed=seed)
    repeat = max(1, round(minutes * 60 / (signal.size / SAMPLE_RATE)))
    signal, joined = join_clips(clips[:120], seed=seed, repeat=repeat)
    wav_bytes(signal, path)
    return signal.size / SAMPLE_RATE


def run_one(args, recording: Path, processes: int, work: Path) -> dict:
    redis_url = f"redis://{args.redis}/13"
    flush_redis(redis_url)
    with scratch_database(args.pg, args.pg_user, prefix="ser_tl") as url:
        env = child_env(
            SER_DATABASE_URL=url,
            SER_BROKER_URL=redis_url,
            SER_DATA_DIR=str(work / "data"),
            SER_TF_THREADS="1",
            **({} if args.reach_back is None else {"SER_VAD_REACH_BACK_S": str(args.reach_back)}),
        )
        worker = Worker(env, work / f"worker-{processes}.log", concurrency=processes)
        try:
            worker.wait_ready()
            children = child_pids(worker.process.pid)
            cpu_before, waited_before = cpu_seconds(children), runqueue_seconds(children)
            started = time.perf_counter()
            done = subprocess.run(
                [BIN / "ser-cli", "submit", str(recording), "--timeline", "--wait", "--json"],
                cwd=REPO,
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            seconds = time.perf_counter() - started
            memory = worker.memory()
            cpu = cpu_seconds(children) - cpu_before
            waited = runqueue_seconds(children) - waited_before
            stored = _stored(url)
            busy = worker.task_seconds()
        finally:
            worker.stop()
    return {
        "processes": processes,
        "seconds": seconds,
        "status": json.loads(done.stdout)["status"],
        "worker_peak_mb": max(memory["children_mb"], default=float("nan")),
        # Where the time went: the workers' CPU, the tasks' summed wall time (busy), and the
        # recording's decode and segmentation (one task, before the fan-out).
        "worker_cpu_s": cpu,
        # Runnable but not running (/proc/PID/schedstat): other processes had the cores.
        "worker_runqueue_wait_s": waited,
        "tasks_busy_s": sum(busy),
        "loadavg_after": os.getloadavg()[0],
        **stored,
    }


def runqueue_seconds(pids: list[int]) -> float:
    """Seconds these processes spent ready to run, waiting for a core (Linux schedstat)."""
    total = 0.0
    for pid in pids:
        try:
            total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            pass
    return total


def _stored(url: str) -> dict:
    from sqlalchemy import func, select

    from ser_worker.service.db.models import Recording, Submission, SubmissionItem
    from ser_worker.service.db.session import session_scope

    with session_scope(url) as session:
        row = session.execute(
            select(func.sum(Recording.stored_bytes), func.sum(Recording.duration_s))
        ).one()
        segments = session.scalar(select(func.sum(Recording.n_segments)))
        segmented = session.execute(
            select(Recording.created_at, Submission.created_at)
            .join(SubmissionItem, SubmissionItem.id == Recording.item_id)
            .join(Submission, Submission.id == SubmissionItem.submission_id)
        ).first()
    return {
        "stored_mb_per_hour": row[0] / row[1] * 3600 / 1e6,
        "segments": segments,
        "segmented_after_s": (segmented[0] - segmented[1]).total_seconds(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--pg", default="127.0.0.1:5432")
    parser.add_argument("--pg-user", default=os.environ.get("PGUSER") or "postgres")
    parser.add_argument("--redis", default="127.0.0.1:6379")
    parser.add_argument(
        "--repeats", type=int, default=1, help="pairs of runs, alternating which goes first"
    )
    parser.add_argument(
        "--processes",
        type=int,
        choices=(1, 2),
        help="only this many worker processes, once per repeat (no ratio): e.g. the peak "
        "memory of a worker on a 3-hour recording",
    )
    parser.add_argument(
        "--reach-back",
        type=float,
        help="the workers' SER_VAD_REACH_BACK_S (0: no backward pass; default: as shipped)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ser-timeline-") as folder:
        work = Path(folder)
        recording = work / "recording.wav"
        audio_s = build_recording(args.data, args.minutes, recording)
        result: dict = {"audio_s": audio_s}
        if args.processes:
            result["runs"] = [
                run_one(args, recording, args.processes, work) for _ in range(args.repeats)
            ]
        else:
            pairs = []
            for r in range(args.repeats):
                order = (1, 2) if r % 2 == 0 else (2, 1)
                pair = {n: run_one(args, recording, n, work) for n in order}
                pairs.append([pair[1], pair[2]])
            ratios = [one["seconds"] / two["seconds"] for one, two in pairs]
            result["runs"] = [run for pair in pairs for run in pair]
            result["speedup_2_vs_1"] = statistics.median(ratios)
            result["speedups"] = ratios
    # What the workers ran with: the flag, or the shipped default (child_env passes them no other
    # SER_ setting, so this process's environment does not reach them).
    result["reach_back_s"] = (
        args.reach_back
        if args.reach_back is not None
        else Settings.model_fields["vad_reach_back_s"].default
    )
    result["cpus"] = os.cpu_count()
    result["load_average"] = os.getloadavg()
    print(json.dumps(result, indent=2) if args.json else result)


if __name__ == "__main__":
    main()
