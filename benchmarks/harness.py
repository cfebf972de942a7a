"""The real services, started the same way for the benchmarks and the integration tests: a
throwaway PostgreSQL database built by `alembic upgrade head`, a Redis database as the broker and
real prefork Celery workers, each in its own process; plus the timing helpers of the benchmark.

Only the standard library at import time: tests/service/conftest.py imports this module, and the
drivers (psycopg, redis) load when a database or broker is first asked for."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.memory import child_pids, proc_status

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TAG = "@@bench@@ "  # marks a child section's result line among whatever else it prints

# One core per process: BLAS, numba and TensorFlow each start a thread per core otherwise.
SINGLE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "SER_TF_THREADS": "1",
}


# --- timing --------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def emit(payload: dict) -> None:
    """A child section's result: one tagged JSON line on stdout."""
    sys.stdout.write(TAG + json.dumps(payload) + "\n")
    sys.stdout.flush()


# --- processes and services ----------------------------------------------------------------------


def child_env(**extra: str) -> dict[str, str]:
    """This environment without the caller's SER_ settings (a child gets only the ones given
    here), unbuffered, with the repository importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SER_")}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    env.update(extra)
    return env


def flush_redis(url: str) -> None:
    """Empty one Redis database; raises redis.RedisError when the server cannot be reached."""
    import redis

    redis.Redis.from_url(url, socket_connect_timeout=3).flushdb()


def migrate(url: str) -> None:
    subprocess.run(
        [str(BIN / "alembic"), "upgrade", "head"],
        cwd=REPO,
        env=child_env(SER_DATABASE_URL=url),
        check=True,
        capture_output=True,
    )


@contextlib.contextmanager
def scratch_database(
    server: str, user: str, *, admin_db: str = "test", prefix: str = "ser"
) -> Iterator[str]:
    """A new PostgreSQL database with the schema migrations build, dropped at the end whatever
    still holds connections to it; yields its SQLAlchemy URL. Raises psycopg.Error when the
    server cannot be reached."""
    import psycopg

    admin = f"postgresql://{user}@{server}/{admin_db}"
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True, connect_timeout=3) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"postgresql+psycopg://{user}@{server}/{name}"
        migrate(url)
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Worker:
    """A real `celery -A ser_worker worker -P prefork` process group, its log in a file.

    Gossip, mingle and heartbeats are off: several workers share one broker in these runs, and
    their chatter would only add start-up time and noise to the logs being read."""

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        *,
        queue: str = "inference",
        concurrency: int = 1,
        prefix: Sequence[str] = (),
        cwd: Path = REPO,
        app: str = "ser_worker",
    ) -> None:
        """`prefix`: a command the worker runs under (benchmarks/hosts.py: `ip netns exec NS`);
        `cwd`: the checkout whose code it runs (Celery imports the app from there first);
        `app`: the module holding the Celery app (benchmarks/old_path.py: the earlier path)."""
        self.log = log
        self.concurrency = concurrency
        self.name = f"{queue}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
        self.spawned = time.time()
        self.ready_at: float | None = None
        self.process = subprocess.Popen(
            [
                *prefix,
                str(BIN / "celery"),
                "-A",
                app,
                "worker",
                "-Q",
                queue,
                "-c",
                str(concurrency),
                "-P",
                "prefork",
                "-n",
                self.name,
                "-l",
                "INFO",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
            ],
            cwd=cwd,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 180) -> float:
        """Seconds from spawn to the worker's `ready.`; stops it and raises if it never is."""
        deadline = time.time() + timeout
        while " ready." not in self.output():
            if self.process.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"worker did not start:\n{self.output()[-4000:]}")
            time.sleep(0.05)
        self.ready_at = time.time()
        return self.ready_at - self.spawned

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tasks_succeeded(self, task: str) -> int:
        return len(re.findall(rf"Task {re.escape(task)}\[[0-9a-f-]+\] succeeded", self.output()))

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


class Bench:
    """One benchmark run: its options, its work folder and log, and its child sections."""

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

    def command(self, name: str, spec: dict) -> list[str]:
        """The command line of section `name` in a child process, its spec in a file."""
        spec_path = self.workdir / f"{name}-{uuid.uuid4().hex[:6]}.json"
        spec_path.write_text(json.dumps(spec))
        return [
            sys.executable,
            str(Path(__file__).resolve().with_name("run.py")),
            "--section",
            name,
            "--spec",
            str(spec_path),
        ]

    def section(self, name: str, spec: dict, env: dict[str, str] | None = None) -> dict:
        proc = subprocess.run(
            self.command(name, spec),
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
