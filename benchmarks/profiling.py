"""py-spy profiles of a worker's pool processes during a measured run (`--profile DIR`)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

from benchmarks.harness import Worker
from benchmarks.memory import child_pids


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
