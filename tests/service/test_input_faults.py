"""Hostile input and an enqueue cut short, on real processes (#18 items 1, 3, 7, 8): the real
`ser-cli` against PostgreSQL and Redis, a real named pipe, a real link to /dev/zero, a broker
reached through a proxy the test cuts."""

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis
from sqlalchemy import func, select

from ser_worker.service import store
from ser_worker.service.db.models import AudioBlob, Submission, SubmissionItem
from ser_worker.service.db.session import session_scope

from .conftest import REPO, TEST_DATA
from .tcp_proxy import TcpProxy

BIN = Path(sys.executable).parent
# The CLI is run under this wrapper, which prints the child's peak resident memory (KiB) last
# on stderr, and limits its address space: an unbounded read fails fast instead of swapping.
MEASURED = (
    "import resource, subprocess, sys\n"
    "limit = 4 * 2**30\n"
    "run = subprocess.run(sys.argv[1:], preexec_fn=lambda: resource.setrlimit("
    "resource.RLIMIT_AS, (limit, limit)))\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(run.returncode)\n"
)
MiB = 2**20


def _cli(env, *args, timeout=120) -> tuple[subprocess.CompletedProcess, int]:
    """(the finished `ser-cli`, its peak RSS in MiB); killed with its wrapper on a timeout."""
    command = _start(env, *args)
    try:
        stdout, stderr = command.communicate(timeout=timeout)
    finally:
        if command.poll() is None:
            os.killpg(command.pid, signal.SIGKILL)  # a CLI hung on a pipe, say
            command.wait()
    *lines, peak = stderr.rstrip("\n").split("\n")
    result = subprocess.CompletedProcess(command.args, command.returncode, stdout, "\n".join(lines))
    return result, int(peak) // 1024


def _start(env, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", MEASURED, BIN / "ser-cli", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _fake_version(database_url: str) -> None:
    """An active version: nothing here is predicted (no worker runs), only stored and queued."""
    with session_scope(database_url) as session:
        store.register_version(
            session, b"fake", {"version": "fake"}, source="trained", activate=True
        )


def _filenames(database_url: str) -> list[str]:
    with session_scope(database_url) as session:
        return list(session.scalars(select(SubmissionItem.filename).order_by(SubmissionItem.id)))


def _count(database_url: str, model) -> int:
    with session_scope(database_url) as session:
        return session.scalar(select(func.count()).select_from(model))


def _folder(root: Path, files: int, size: int) -> Path:
    root.mkdir(parents=True)
    for index in range(files):
        (root / f"{index:04}.wav").write_bytes(os.urandom(size))
    return root


def _queued_item_ids(redis_url: str) -> list[int]:
    """The item ids of every inference task waiting in Redis (Celery's JSON message bodies)."""
    ids = []
    for raw in redis.Redis.from_url(redis_url).lrange("inference", 0, -1):
        args, _kwargs, _embed = json.loads(base64.b64decode(json.loads(raw)["body"]))
        ids.extend(args[0])
    return ids


def test_pipes_devices_and_sockets_are_never_read(service_env, database_url, tmp_path):
    _fake_version(database_url)
    root = tmp_path / "clips"
    root.mkdir()
    shutil.copy(next(TEST_DATA.rglob("*.flac")), root / "real.flac")
    os.mkfifo(root / "pipe.wav")  # read, it blocks for ever: no writer will come
    (root / "zero.wav").symlink_to("/dev/zero")  # read, it never ends
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(root / "socket.wav"))

    try:
        result, peak = _cli(service_env, "submit", str(root), timeout=60)
    finally:
        listener.close()

    assert result.returncode == 0, result.stderr
    shown = " ".join(result.stderr.split())
    assert "pipe.wav: a named pipe, not a regular file: not read" in shown
    assert "zero.wav: a character device, not a regular file: not read" in shown
    assert "socket.wav: a socket, not a regular file: not read" in shown
    assert _filenames(database_url) == ["clips/real.flac"]
    assert peak < 1024


def test_nothing_is_read_before_the_services_answer(service_env, tmp_path):
    root = _folder(tmp_path / "big", files=300, size=MiB)
    down = {**service_env, "SER_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"}

    baseline, idle = _cli(down, "status")
    result, peak = _cli(down, "submit", str(root))

    assert baseline.returncode != 0 and result.returncode != 0
    assert "database unavailable" in result.stderr
    # 300 MiB of clips, none of it read: the same memory as a command that reads nothing.
    assert peak - idle < 32, (peak, idle)


def test_an_enqueue_cut_short_is_queued_by_the_next_status(
    service_env, database_url, redis_url, tmp_path
):
    """The broker goes away after the check, while the audio is being stored: the submission is
    stored, nothing is queued, and the next `status` queues every pending clip exactly once. The
    upload holds one batch in memory, not the folder."""
    _fake_version(database_url)
    redis.Redis.from_url(redis_url).delete("inference")
    root = _folder(tmp_path / "big", files=300, size=MiB)
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    database = redis_url.rsplit("/", 1)[1]
    with TcpProxy(port) as proxy:
        env = {**service_env, "SER_BROKER_URL": f"redis://127.0.0.1:{proxy.port}/{database}"}
        _, idle = _cli(env, "status", timeout=60)  # nothing submitted yet: fails, after imports
        command = _start(env, "submit", str(root))
        deadline = time.monotonic() + 60
        while _count(database_url, AudioBlob) == 0:  # the check passed; the upload began
            assert command.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        proxy.cut()
        _, stderr = command.communicate(timeout=120)
        *lines, peak = stderr.rstrip("\n").split("\n")
        stderr, peak = " ".join("\n".join(lines).split()), int(peak) // 1024

        assert command.returncode != 0
        assert "broker unreachable while enqueueing" in stderr
        assert "the next `ser-cli status`, `submit` or `resume` queues its clips" in stderr
        assert _count(database_url, SubmissionItem) == 300
        assert _queued_item_ids(redis_url) == []
        assert _count(database_url, Submission) == 1
        # 300 MiB of clips stored with a bounded batch (64 MiB) in memory at a time.
        assert peak - idle < 200, (peak, idle)

        proxy.restore()
        status, _ = _cli(env, "status")
        again, _ = _cli(env, "status")

    assert status.returncode == 0, status.stderr
    assert "300 clips were stored but never queued" in " ".join(status.stderr.split())
    assert "never queued" not in again.stderr
    with session_scope(database_url) as session:
        pending = set(session.scalars(select(SubmissionItem.id)))
    queued = _queued_item_ids(redis_url)
    assert sorted(queued) == sorted(pending)  # each clip queued once: 0 lost, 0 duplicated


def test_passwords_in_urls_are_never_printed(service_env):
    secret_db = {
        **service_env,
        "SER_DATABASE_URL": "postgresql+psycopg://u@127.0.0.1:1/db?password=S3cret",
    }
    secret_broker = {**service_env, "SER_BROKER_URL": "redis://:S3cret@127.0.0.1:1/0"}

    # `status` reads the database only (#18 item 5); `resume` checks the broker too.
    results = [_cli(secret_db, "status")[0], _cli(secret_broker, "resume")[0]]

    for result in results:
        assert result.returncode != 0
        assert "S3cret" not in result.stderr + result.stdout
        assert "***" in result.stderr
    assert "password=***" in results[0].stderr
    assert "redis://:***@127.0.0.1:1/0" in results[1].stderr
