"""Faults injected into the real service: workers killed by pid, the database cut off through a
proxy and its connections revoked, the broker killed and restarted, training killed half-way,
model bundles damaged, two workers racing on overlapping submissions. docs/RELIABILITY.md lists
each fault, its guarantee and the test here that proves it."""

import ast
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
import redis
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ser_worker.bundle import read_manifest
from ser_worker.datasets import find_audio_files
from ser_worker.service import store
from ser_worker.service.db.models import (
    AudioBlob,
    Evaluation,
    ModelVersion,
    Prediction,
    SubmissionItem,
    TrainingRun,
)
from ser_worker.service.db.session import session_scope

from .conftest import (
    BIN,
    CORPUS,
    REPO,
    TEST_DATA,
    Worker,
    _unavailable,
    register_bundle,
    run_cli,
)
from .tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

CLIPS = 12  # the committed clips under tests/data, all labelled
PER_CLIP = 3  # predictions per clip and version: cnn1d, cnn2d, ensemble
TESS = CORPUS / "tess"  # both speakers, the six emotions, 4 clips each


# --- helpers -----------------------------------------------------------------------------------


def _json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _wait_for(condition: Callable[[], object], timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _submit(env: dict[str, str], *args: str) -> str:
    """`ser-cli submit|evaluate ...` without waiting: the submission id."""
    result = run_cli(env, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def _counts(database_url: str, submission_id: str) -> dict[str, int]:
    with session_scope(database_url) as session:
        return dict(store.status_counts(session, submission_id))


def _finished(database_url: str, submission_id: str) -> bool:
    return "pending" not in _counts(database_url, submission_id)


def _count(database_url: str, model: type) -> int:
    with session_scope(database_url) as session:
        return session.scalar(select(func.count()).select_from(model))


def _batches(size: int) -> list[list[bytes]]:
    """The committed clips, as `ser-cli submit tests/data` cuts them into batches of `size`."""
    files, _ = find_audio_files(TEST_DATA)  # the order the CLI uploads and enqueues them in
    clips = [path.read_bytes() for path in files]
    return [clips[start : start + size] for start in range(0, len(clips), size)]


@contextmanager
def _holding(database_url: str, batches: list[list[bytes]]) -> Iterator[None]:
    """Hold these clips as a worker predicting them holds them (their advisory locks for the
    active version): a task that reaches them waits, inside its open transaction, until the
    block ends. The faults below strike a task in that known state instead of racing it."""
    with session_scope(database_url) as session:
        version_id = store.active_version(session).id
    clips = [clip for batch in batches for clip in batch]
    with psycopg.connect(_libpq(database_url), autocommit=True) as connection:
        for key in sorted({store.audio_lock_key(store.sha256_hex(clip)) for clip in clips}):
            connection.execute("SELECT pg_advisory_lock(%s, %s)", (version_id, key))
        yield  # leaving closes the connection, which releases the locks


def _held_tasks(database_url: str) -> int:
    """Connections to this database waiting for a clip's lock: tasks held mid-transaction."""
    with psycopg.connect(_libpq(database_url)) as connection:
        return connection.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event = 'advisory'"
        ).fetchone()[0]


def _libpq(database_url: str) -> str:
    return database_url.replace("postgresql+psycopg://", "postgresql://")


def _received(worker: Worker, task: str) -> int:
    """Deliveries of ``task`` to this worker (a task retried or given back counts again)."""
    return len(re.findall(rf"Task {re.escape(task)}\[[0-9a-f-]+\] received", worker.output()))


def _infer_results(worker: Worker) -> list[dict[str, int]]:
    """The return value of each ser.infer this worker ran to success."""
    pattern = r"Task ser\.infer\[[0-9a-f-]+\] succeeded in [\d.]+s: (\{[^}]*\})"
    return [ast.literal_eval(value) for value in re.findall(pattern, worker.output())]


def _retries(worker: Worker) -> int:
    return len(re.findall(r"Task ser\.infer\[[0-9a-f-]+\] retry: Retry in", worker.output()))


def _pool_children(worker: Worker) -> list[int]:
    """Pids of the prefork pool's processes (Linux /proc)."""
    pid = worker.process.pid
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _kill_pool_child(worker: Worker) -> int:
    [child] = _pool_children(worker)
    os.kill(child, signal.SIGKILL)
    return child


def _kill_worker(worker: Worker) -> None:
    """SIGKILL the whole worker, parent and pool, as a lost host vanishes."""
    os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _renamed(bundle: bytes, version: str) -> bytes:
    """The same bundle under another version string: a second valid model version."""
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(bundle)) as source,
        zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as target,
    ):
        for entry in source.infolist():
            data = source.read(entry)
            if entry.filename == "manifest.json":
                data = json.dumps({**json.loads(data), "version": version}).encode()
            target.writestr(entry.filename, data)
    return out.getvalue()


def _flip_bytes(bundle: bytes) -> bytes:
    """64 bytes flipped in the middle of the weights, as a bad disk or a bad copy would."""
    middle = len(bundle) // 2
    flipped = bytes(byte ^ 0xFF for byte in bundle[middle : middle + 64])
    return bundle[:middle] + flipped + bundle[middle + 64 :]


class RedisServer:
    """A private redis-server on a free port, to kill and restart without touching the shared
    one. ``appendonly``: every write is fsynced to an append-only file before it is answered."""

    def __init__(self, directory: Path, *, appendonly: bool) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        port = _free_port()
        self.url = f"redis://127.0.0.1:{port}/0"
        self.args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1"]
        self.args += ["--dir", str(directory), "--save", ""]
        self.args += ["--appendonly", "yes" if appendonly else "no", "--appendfsync", "always"]
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

        def ready() -> bool:
            try:
                with redis.Redis.from_url(self.url, socket_connect_timeout=1) as client:
                    return client.ping()
            except redis.RedisError:
                return False

        _wait_for(ready, 20, "redis-server to start")

    def crash(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A broker of this module's own: tests that kill workers and replay tasks must not share
    queues with another test run using the machine's Redis at the same time."""
    if shutil.which("redis-server") is None:
        _unavailable("redis-server is not installed")
    server = RedisServer(tmp_path_factory.mktemp("broker"), appendonly=False)
    yield server.url
    server.crash()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    servers: list[RedisServer] = []

    def start(*, appendonly: bool) -> RedisServer:
        servers.append(RedisServer(tmp_path / f"redis-{len(servers)}", appendonly=appendonly))
        return servers[-1]

    yield start
    for server in servers:
        if server.process.poll() is None:
            server.crash()


# --- a worker killed ---------------------------------------------------------------------------


def test_a_killed_pool_process_gives_its_task_back(
    service_env, start_worker, database_url, test_bundle
):
    """SIGKILL of the process running a task, mid-transaction: the worker sees it die and puts
    the task back (acks late, reject on worker lost); the submission completes with each clip
    computed and stored once. A replayed task changes nothing, and the database itself refuses
    a duplicate prediction."""
    register_bundle(database_url, test_bundle)
    env = {**service_env, "SER_BATCH_SIZE": "4"}
    worker = start_worker("inference", 1, SER_BATCH_SIZE="4")
    first, *rest = _batches(4)
    with _holding(database_url, rest):
        submission = _submit(env, "evaluate", str(TEST_DATA))
        _wait_for(lambda: _held_tasks(database_url), 90, "the second batch to be mid-task")
        assert _counts(database_url, submission) == {"done": len(first), "pending": CLIPS - 4}
        killed = _kill_pool_child(worker)

    _wait_for(lambda: _count(database_url, Evaluation), 120, "the evaluation to be stored")
    assert _counts(database_url, submission) == {"done": CLIPS}
    output = worker.output()
    assert "WorkerLostError" in output and "signal 9 (SIGKILL)" in output
    assert killed not in _pool_children(worker)  # a fresh pool process took the task over
    assert _received(worker, "ser.infer") == CLIPS // 4 + 1  # the killed batch came back once
    assert sum(result["computed"] for result in _infer_results(worker)) == CLIPS
    assert _count(database_url, Prediction) == CLIPS * PER_CLIP

    # A second delivery of a finished batch (a worker that died after its commit, before its
    # acknowledgement): nothing is computed again, and the evaluation is written if it was not.
    with session_scope(database_url) as session:
        batch = session.scalars(select(SubmissionItem.id).order_by(SubmissionItem.id)).all()[-4:]
        session.execute(delete(Evaluation))
    subprocess.run(
        [BIN / "celery", "-A", "ser_worker", "call", "ser.infer", "--args", json.dumps([batch])],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    _wait_for(lambda: _count(database_url, Evaluation), 60, "the replay to store the evaluation")
    assert _infer_results(worker)[-1] == {"done": 0, "failed": 0, "computed": 0}
    assert _count(database_url, Prediction) == CLIPS * PER_CLIP

    # Not luck: the (audio, version, model) key is unique in the schema.
    with pytest.raises(IntegrityError), session_scope(database_url) as session:
        row = session.scalars(select(Prediction).limit(1)).one()
        columns = ("sha256", "model_version_id", "model", "emotion", "confidence")
        values = {name: getattr(row, name) for name in columns}
        session.execute(insert(Prediction).values(probabilities={}, **values))


def test_a_killed_worker_host_hands_its_task_to_another_worker(
    service_env, start_worker, database_url, test_bundle
):
    """SIGKILL of the whole worker, parent and pool, mid-task (nobody is left to give the task
    back): Redis keeps the unacknowledged task and, once SER_VISIBILITY_TIMEOUT_S has passed,
    hands it to another worker, which finishes the submission."""
    register_bundle(database_url, test_bundle)
    settings = {"SER_BATCH_SIZE": "4", "SER_VISIBILITY_TIMEOUT_S": "3"}
    env = {**service_env, **settings}
    first = start_worker("inference", 1, **settings)
    done, *rest = _batches(4)
    with _holding(database_url, rest):
        submission = _submit(env, "submit", str(TEST_DATA))
        _wait_for(lambda: _held_tasks(database_url), 90, "the second batch to be mid-task")
        _kill_worker(first)
    assert first.tasks_succeeded("ser.infer") == 1
    time.sleep(3)  # the killed worker's task is now older than the visibility timeout
    assert _counts(database_url, submission) == {"done": len(done), "pending": CLIPS - 4}

    second = start_worker("inference", 1, **settings)
    _wait_for(lambda: _finished(database_url, submission), 120, "the submission to finish")
    assert _counts(database_url, submission) == {"done": CLIPS}
    assert second.tasks_succeeded("ser.infer") == len(rest)  # including the restored batch
    assert _count(database_url, Prediction) == CLIPS * PER_CLIP


# --- the database unavailable ------------------------------------------------------------------


def test_a_database_outage_is_waited_out(service_env, start_worker, database_url, test_bundle):
    """Connections refused and open ones cut for seconds, mid-submission, for the worker and the
    CLI alike: tasks retry with backoff, `evaluate --wait` waits, and the evaluation completes
    once the database is back. Then the server drops every connection (as when it restarts):
    stale pooled connections are replaced on checkout, without even a retry."""
    register_bundle(database_url, test_bundle)
    with TcpProxy(5432) as proxy:
        proxied = database_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
        settings = {"SER_BATCH_SIZE": "2", "SER_DATABASE_URL": proxied}
        env = {**service_env, **settings}
        worker = start_worker("inference", 1, **settings)
        first, *rest = _batches(2)
        with _holding(database_url, rest):
            cli = subprocess.Popen(
                [BIN / "ser-cli", "evaluate", str(TEST_DATA), "--wait", "--json"],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            _wait_for(lambda: _held_tasks(database_url), 90, "the second batch to be mid-task")
            proxy.cut()  # the held task loses its connection mid-transaction
        with session_scope(database_url) as session:
            submission = session.scalars(select(SubmissionItem.submission_id)).first()
        time.sleep(8)
        assert _counts(database_url, submission) == {"done": len(first), "pending": CLIPS - 2}
        proxy.restore()

        stdout, stderr = cli.communicate(timeout=180)
        assert cli.returncode == 0, stderr
        evaluation = json.loads(stdout)
        assert evaluation["submission"] == submission and evaluation["n_clips"] == CLIPS
        assert set(evaluation["metrics"]) == {"cnn1d", "cnn2d", "ensemble"}
        assert "database unavailable (OperationalError)" in " ".join(stderr.split())
        retries = _retries(worker)
        assert retries > 0 and "OperationalError" in worker.output()
        assert _counts(database_url, submission) == {"done": CLIPS}
        assert _count(database_url, Prediction) == CLIPS * PER_CLIP

        with psycopg.connect(_libpq(database_url), autocommit=True) as connection:
            terminated = connection.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()[0]
        assert terminated > 0  # the worker's pooled connections
        again = _json(run_cli(env, "submit", str(TEST_DATA), "--force", "--wait", "--json"))
        assert again["status"] == {"done": CLIPS}
        assert _retries(worker) == retries


# --- the broker restarted ----------------------------------------------------------------------


@pytest.mark.parametrize("appendonly", [True, False], ids=["appendonly", "no-persistence"])
def test_a_broker_restart_loses_nothing_the_database_knows(
    appendonly, service_env, start_worker, database_url, test_bundle, private_redis
):
    """Redis killed mid-submission and restarted: the worker reconnects by itself. With an
    append-only file every queued task survives and runs. Without persistence the queued
    tasks are lost, but the database still has their clips `pending`, and `ser-cli resume`
    enqueues exactly those again and completes the submission."""
    register_bundle(database_url, test_bundle)
    broker = private_redis(appendonly=appendonly)
    settings = {"SER_BROKER_URL": broker.url, "SER_BATCH_SIZE": "1"}
    env = {**service_env, **settings}
    worker = start_worker("inference", 1, **settings)
    first, held, *queued = _batches(1)
    with _holding(database_url, [held]):
        submission = _submit(env, "submit", str(TEST_DATA))
        _wait_for(lambda: _held_tasks(database_url), 90, "the second clip to be mid-task")
        broker.crash()  # with one clip done, one in the worker's hands, the rest queued
        time.sleep(2)
        broker.start()
        _wait_for(lambda: worker.output().count("Connected to redis") == 2, 60, "a reconnection")

    def idle() -> bool:
        before = _counts(database_url, submission)
        time.sleep(3)
        return _counts(database_url, submission) == before

    _wait_for(idle, 60, "the worker to go idle")
    pending = len(queued) if not appendonly else 0
    assert _counts(database_url, submission) == {
        "done": CLIPS - pending,
        **({"pending": pending} if pending else {}),
    }

    result = run_cli(env, "resume", submission, "--wait", "--json")
    assert f"re-enqueued {pending} pending clips" in result.stderr
    assert _json(result)["status"] == {"done": CLIPS}
    assert _count(database_url, Prediction) == CLIPS * PER_CLIP


# --- training killed, bundles damaged ----------------------------------------------------------


def _train(env: dict[str, str], data: Path, *args: str) -> int:
    result = run_cli(
        env,
        "train",
        str(data),
        "--labels",
        "tess",
        "--split",
        "random",
        "--models",
        "cnn1d",
        "--promote",
        "always",
        *args,
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout.strip())


def _run(database_url: str, run_id: int) -> TrainingRun:
    with session_scope(database_url) as session:
        return session.get(TrainingRun, run_id)


def _versions(database_url: str) -> list[tuple[str, bool]]:
    with session_scope(database_url) as session:
        versions = session.scalars(select(ModelVersion).order_by(ModelVersion.id))
        return [(version.version, version.active) for version in versions]


def test_training_killed_half_way_registers_nothing(
    service_env, start_worker, database_url, test_bundle
):
    """SIGKILL of the training process mid-epoch: no version is registered (the version, the
    run's result and the promotion are one transaction at the end) and the active version
    keeps serving; the task is given back and the run, trained again, registers exactly one."""
    active = register_bundle(database_url, test_bundle)
    worker = start_worker("training", 1)
    run_id = _train(service_env, TESS, "--epochs", "8")

    _wait_for(lambda: "cnn1d epoch 2/8" in worker.output(), 180, "training to be half-way")
    _kill_pool_child(worker)
    _wait_for(lambda: "WorkerLostError" in worker.output(), 30, "the worker to see the loss")
    assert _versions(database_url) == [(active, True)]
    assert _run(database_url, run_id).status == "running"

    _wait_for(lambda: _run(database_url, run_id).finished_at, 240, "the run to finish")
    run = _run(database_url, run_id)
    assert run.status == "succeeded" and run.promoted, run.error
    assert _received(worker, "ser.train") == 2 and worker.tasks_succeeded("ser.train") == 1
    [(old, old_active), (new, new_active)] = _versions(database_url)
    assert old == active and not old_active and new_active


def test_a_training_run_delivered_twice_registers_once(service_env, start_worker, database_url):
    """A visibility timeout shorter than a training run makes Redis deliver the running task to
    a second worker. Both train; the run's row lock lets only the first to finish register."""
    settings = {"SER_VISIBILITY_TIMEOUT_S": "2"}
    first = start_worker("training", 1, **settings)
    run_id = _train({**service_env, **settings}, TESS, "--epochs", "10")
    _wait_for(lambda: "cnn1d epoch 1/10" in first.output(), 180, "training to start")
    second = start_worker("training", 1, **settings)  # restores the task older than 2 s

    _wait_for(lambda: _received(second, "ser.train"), 30, "the second delivery")
    assert not first.tasks_succeeded("ser.train"), "the first delivery finished too soon"
    # Workers sweep for tasks past their visibility timeout every second here, so the run may be
    # delivered more than twice; a delivery that starts after the registration returns at once.
    # What matters: the one that trained to the end second registers nothing.
    _wait_for(
        lambda: (
            "another delivery of this run already registered it" in first.output() + second.output()
        ),
        240,
        "the second training delivery to finish",
    )
    assert _run(database_url, run_id).status == "succeeded"
    assert len(_versions(database_url)) == 1


def test_a_damaged_or_missing_bundle_is_refused_and_reported(
    service_env, start_worker, database_url, test_bundle
):
    """Model bundles damaged or lost in storage after registration: activating one fails with
    a clear error and the active version keeps serving; a submission pinned to a damaged one
    fails each clip at once with error_code `model_error`, instead of a task failing again and
    again with the clips left pending."""
    good = register_bundle(database_url, test_bundle)
    damaged, lost = "20990101T000000Z-0da3a9ed", "20990101T000000Z-00000105"
    for name, stored in ((damaged, _flip_bytes), (lost, lambda bundle: b"")):
        spare = _renamed(test_bundle, name)
        with session_scope(database_url) as session:
            store.register_version(
                session, spare, read_manifest(spare), source="trained", activate=False
            )
        with session_scope(database_url) as session:  # the storage fails it afterwards
            session.execute(
                update(ModelVersion)
                .where(ModelVersion.version == name)
                .values(bundle=stored(spare))
            )

    for name, reason in ((damaged, "is corrupt"), (lost, "is missing")):
        refused = run_cli(service_env, "models", "--activate", name)
        assert refused.returncode == 1
        assert (
            f"model version {name} not activated, the active one is unchanged: "
            f"the model bundle {reason}"
        ) in " ".join(refused.stderr.split())
    listing = _json(run_cli(service_env, "models", "--json"))
    assert [entry["version"] for entry in listing if entry["active"]] == [good]

    worker = start_worker("inference", 1)
    served = _json(run_cli(service_env, "submit", str(TEST_DATA), "--wait", "--json"))
    assert served["status"] == {"done": CLIPS}
    rows = _json(run_cli(service_env, "results", "--format", "json"))
    assert {row["model_version"] for row in rows} == {good}

    pinned = run_cli(
        service_env,
        "evaluate",
        str(TEST_DATA),
        "--model-version",
        damaged,
        "--wait",
        "--json",
    )
    evaluation = _json(pinned)
    assert evaluation["n_clips"] == CLIPS and evaluation["metrics"] == {}
    failed = _json(run_cli(service_env, "results", "--format", "json", "--model", "ensemble"))
    assert len(failed) == CLIPS
    for row in failed:
        assert row["status"] == "failed" and row["error_code"] == "model_error"
        assert row["error"].startswith(f"model version {damaged} cannot be used: "), row["error"]
    assert _retries(worker) == 0 and "raised unexpected" not in worker.output()


# --- two workers, overlapping submissions ------------------------------------------------------


def test_overlapping_submissions_on_two_workers_compute_each_clip_once(
    service_env, start_worker, database_url, test_bundle
):
    """The same folder submitted twice at once, two workers: both submissions complete, the
    audio is stored once, and each clip is computed once per model version (the second worker
    to reach a clip waits for the first and reuses its predictions)."""
    register_bundle(database_url, test_bundle)
    settings = {"SER_BATCH_SIZE": "2"}
    workers = [start_worker("inference", 1, **settings) for _ in range(2)]
    command = [BIN / "ser-cli", "submit", str(TEST_DATA), "--wait", "--json"]
    clis = [
        subprocess.Popen(
            command,
            cwd=REPO,
            env={**service_env, **settings},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    summaries = []
    for cli in clis:
        stdout, stderr = cli.communicate(timeout=300)
        assert cli.returncode == 0, stderr
        summaries.append(json.loads(stdout))

    assert [summary["status"] for summary in summaries] == [{"done": CLIPS}] * 2
    assert summaries[0]["submission"] != summaries[1]["submission"]
    assert _count(database_url, AudioBlob) == CLIPS
    assert _count(database_url, Prediction) == CLIPS * PER_CLIP
    results = [result for worker in workers for result in _infer_results(worker)]
    assert len(results) == 2 * CLIPS // 2  # every batch of both submissions ran once
    assert sum(result["computed"] for result in results) == CLIPS
    assert all(worker.tasks_succeeded("ser.infer") for worker in workers)
