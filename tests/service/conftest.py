"""Real services for the integration tests: a fresh PostgreSQL database built by
`alembic upgrade head`, a Redis database as the broker, real prefork Celery workers and the real
`ser-cli`, each in its own process."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TEST_DATA = REPO / "tests" / "data"
SHARED_DATA = REPO.parent / "shared" / "data"
PG_ADMIN = "postgresql://{user}@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/14"


def _unavailable(reason: str):
    if os.environ.get("SER_REQUIRE_SERVICES") == "1":
        pytest.fail(f"required service unavailable: {reason}")
    pytest.skip(f"service unavailable: {reason}")


def _pg_user() -> str:
    return os.environ.get("PGUSER") or "postgres"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    try:
        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        client.ping()
    except redis.RedisError as error:
        _unavailable(f"Redis at {REDIS_URL}: {error}")
    client.flushdb()
    yield REDIS_URL
    client.flushdb()


@pytest.fixture
def database_url() -> Iterator[str]:
    """A new PostgreSQL database per test, schema built by `alembic upgrade head`."""
    admin = PG_ADMIN.format(user=_pg_user())
    name = f"ser_it_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=3) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as error:
        _unavailable(f"PostgreSQL at {admin}: {error}")
    url = f"postgresql+psycopg://{_pg_user()}@127.0.0.1:5432/{name}"
    subprocess.run(
        [BIN / "alembic", "upgrade", "head"],
        cwd=REPO,
        env={**os.environ, "SER_DATABASE_URL": url},
        check=True,
        capture_output=True,
    )
    yield url
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def service_env(database_url: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SER_")}
    env.update(
        SER_DATABASE_URL=database_url,
        SER_BROKER_URL=redis_url,
        SER_DATA_DIR=str(tmp_path / "ser-data"),
        SER_TF_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


class Worker:
    """A real `celery worker` process (prefork pool) with its log in a file."""

    def __init__(self, env: dict[str, str], queue: str, concurrency: int, log: Path):
        self.log = log
        self.name = f"{queue}-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"
        self.process = subprocess.Popen(
            [
                BIN / "celery",
                "-A",
                "ser_worker",
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
            cwd=REPO,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while " ready." not in self.output():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"worker did not start:\n{self.output()}")
            time.sleep(0.2)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tasks_succeeded(self, task: str) -> int:
        return len(re.findall(rf"Task {re.escape(task)}\[[0-9a-f-]+\] succeeded", self.output()))

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def start_worker(service_env: dict[str, str], tmp_path: Path):
    workers: list[Worker] = []

    def start(queue: str = "inference", concurrency: int = 1, **env: str) -> Worker:
        log = tmp_path / f"worker-{len(workers)}.log"
        worker = Worker({**service_env, **env}, queue, concurrency, log)
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        worker.stop()


def run_cli(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BIN / "ser-cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def test_bundle(tmp_path_factory) -> bytes:
    """A small real bundle: both architectures, briefly trained on the committed clips.

    Enough to exercise the service end to end; its accuracy means nothing.
    """
    return _fixture_bundle(tmp_path_factory, with_encoder=False)


@pytest.fixture(scope="session")
def encoder_bundle(tmp_path_factory) -> bytes:
    """`test_bundle` with the speech encoder's head as well, as the shipped bundle has."""
    return _fixture_bundle(tmp_path_factory, with_encoder=True)


def _fixture_bundle(tmp_path_factory, *, with_encoder: bool) -> bytes:
    from ser_worker.audio import load_audio, trim_silence
    from ser_worker.bundle import bundle_bytes
    from ser_worker.datasets import Split, load_dataset
    from ser_worker.training.experiment import train_and_evaluate
    from ser_worker.training.fit import TrainConfig

    dataset = load_dataset(TEST_DATA)
    untrimmed = [load_audio(clip.path, trim=False) for clip in dataset.clips]
    everything = tuple(range(len(dataset.clips)))
    split = Split(everything, everything, everything, "fixture", "all 12 clips on every side")
    bundle, _ = train_and_evaluate(
        [trim_silence(y) for y in untrimmed],
        dataset.clips,
        split,
        TrainConfig(epochs=1, augment_copies=0),
        cache_dir=tmp_path_factory.mktemp("bundle-cache"),
        untrimmed=untrimmed if with_encoder else None,
    )
    return bundle_bytes(bundle)


def register_bundle(database_url: str, bundle: bytes) -> str:
    """Make `bundle` the active model version of the database; returns its version string."""
    from ser_worker.bundle import read_manifest
    from ser_worker.service import store
    from ser_worker.service.db.session import session_scope

    manifest = read_manifest(bundle)
    with session_scope(database_url) as session:
        store.register_version(session, bundle, manifest, source="trained", activate=True)
    return manifest["version"]
