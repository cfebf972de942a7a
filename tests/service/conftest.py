"""Real services for the integration tests: a fresh PostgreSQL database built by
`alembic upgrade head`, a Redis database as the broker, real prefork Celery workers and the real
`ser-cli`, each in its own process, started by the harness the benchmarks use
(benchmarks/harness.py)."""

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from benchmarks.harness import BIN, REPO, Worker, child_env, flush_redis, scratch_database

TEST_DATA = REPO / "tests" / "data"
CORPUS = REPO / "tests" / "corpus"  # more clips and speakers, for training and sharing work
PG_SERVER = "127.0.0.1:5432"
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
        flush_redis(REDIS_URL)
    except redis.RedisError as error:
        _unavailable(f"Redis at {REDIS_URL}: {error}")
    yield REDIS_URL
    flush_redis(REDIS_URL)


@pytest.fixture
def database_url() -> Iterator[str]:
    """A new PostgreSQL database per test, schema built by `alembic upgrade head`."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(scratch_database(PG_SERVER, _pg_user(), prefix="ser_it"))
        except psycopg.Error as error:
            _unavailable(f"PostgreSQL at {PG_SERVER}: {error}")
        yield url


@pytest.fixture
def service_env(database_url: str, redis_url: str, tmp_path: Path) -> dict[str, str]:
    return child_env(
        SER_DATABASE_URL=database_url,
        SER_BROKER_URL=redis_url,
        SER_DATA_DIR=str(tmp_path / "ser-data"),
        SER_TF_THREADS="1",
    )


@pytest.fixture
def start_worker(service_env: dict[str, str], tmp_path: Path):
    workers: list[Worker] = []

    def start(queue: str = "inference", concurrency: int = 1, **env: str) -> Worker:
        log = tmp_path / f"worker-{len(workers)}.log"
        worker = Worker({**service_env, **env}, log, queue=queue, concurrency=concurrency)
        workers.append(worker)
        worker.wait_ready(timeout=60)
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
    from ser_worker.training.config import TrainConfig
    from ser_worker.training.experiment import train_and_evaluate

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
    return manifest.version
