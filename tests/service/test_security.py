"""Security properties of the running service, each shown against real processes:

- the worker refuses pickled messages (JSON only), even one carrying a real exploit;
- database and broker passwords never reach a worker log, the CLI's output or its error messages;
- the file names users submit are never paths on workers: clips are decoded from stored bytes;
- a decompression bomb is refused from its header, before it is decoded;
- SQL is built by SQLAlchemy with bound parameters, and no credentials are written in the code.
"""

import ast
import io
import json
import os
import re
import struct
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from ser_worker.service import store
from ser_worker.service.db.models import ModelVersion, Prediction, SubmissionItem
from ser_worker.service.db.session import session_scope

from .conftest import REPO, register_bundle, run_cli

pytestmark = pytest.mark.integration

DB_SECRET = "S3cretDbPw-7f2a"
BROKER_SECRET = "S3cretBrokerPw-91c4"
SECRETS = (DB_SECRET, BROKER_SECRET)


# --- helpers -----------------------------------------------------------------------------------


def speech(sample_rate: int = 16_000, seconds: float = 1.5, f0: float = 150.0) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8) if k * f0 < sample_rate / 2)
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)
    return (0.3 * tone / np.max(np.abs(tone)) * envelope).astype(np.float32)


def encode(y: np.ndarray, sample_rate: int = 16_000, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, y, sample_rate, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


@pytest.fixture
def secret_env(service_env: dict[str, str]) -> dict[str, str]:
    """The service environment with a password in both URLs.

    PostgreSQL here trusts local connections and this Redis has no password set, so both accept
    (and ignore) any password: the secrets travel exactly as they would in production.
    """
    database = make_url(service_env["SER_DATABASE_URL"]).set(password=DB_SECRET)
    broker = service_env["SER_BROKER_URL"].replace("redis://", f"redis://:{BROKER_SECRET}@", 1)
    return {
        **service_env,
        "SER_DATABASE_URL": database.render_as_string(hide_password=False),
        "SER_BROKER_URL": broker,
    }


def _worker(start_worker, secret_env: dict[str, str], queue: str = "inference"):
    names = ("SER_DATABASE_URL", "SER_BROKER_URL")
    return start_worker(queue, 1, **{name: secret_env[name] for name in names})


def _private_queue() -> str:
    """A queue only this test's worker consumes: tasks sent here reach no other worker (other
    test runs share the Redis database and its "inference" queue)."""
    return f"inference-test-{uuid.uuid4().hex[:8]}"


def _client(broker_url: str) -> Celery:
    """A producer outside the service: it may use any serializer the worker is sent."""
    client = Celery("outsider", broker=broker_url)
    client.conf.update(accept_content=["json", "pickle"], broker_connection_retry=False)
    return client


def _send(client: Celery, args: list, *, queue: str, serializer: str = "json") -> str:
    """Publish a ser.infer task message exactly as Celery shapes it; returns the task id."""
    return client.send_task("ser.infer", args=args, queue=queue, serializer=serializer).id


def _submit_bytes(database_url: str, clips: dict[str, bytes]) -> dict[str, int]:
    """Store clips the way `ser-cli submit` does; returns item id per display name."""
    uploads = [store.ClipUpload(filename=name, data=data) for name, data in clips.items()]
    with session_scope(database_url) as session:
        version = session.scalar(select(ModelVersion).where(ModelVersion.active))
        submission = store.create_submission(
            session, uploads, kind="predict", label_scheme="none", model_version_id=version.id
        )
        return {item.filename: item.id for item in submission.items}


def _wait_processed(database_url: str, item_ids: list[int], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        with session_scope(database_url) as session:
            items = session.scalars(
                select(SubmissionItem).where(SubmissionItem.id.in_(item_ids))
            ).all()
        if all(item.status != "pending" for item in items):
            return {item.id: item for item in items}
        assert time.monotonic() < deadline, [(item.filename, item.status) for item in items]
        time.sleep(0.3)


def _wait_for_log(worker, pattern: str, count: int = 1, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(found := re.findall(pattern, worker.output())) < count:
        assert time.monotonic() < deadline, f"no {pattern!r} in the worker log:\n{worker.output()}"
        time.sleep(0.2)
    return found


def _assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"password {secret!r} leaked:\n{text}"


def _pool_child_peak_rss_kb(worker) -> int:
    """Peak resident memory (VmHWM) of the worker's single pool process."""
    children = [
        stat.parent
        for stat in Path("/proc").glob("[0-9]*/stat")
        if _parent_pid(stat) == worker.process.pid
    ]
    assert len(children) == 1, children
    status = (children[0] / "status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE).group(1))


def _parent_pid(stat: Path) -> int | None:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


class Tripwire:
    """Unpickling this creates a file: proof that a process deserialised attacker data."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


# --- tests -------------------------------------------------------------------------------------


def test_worker_refuses_pickled_messages(
    secret_env, start_worker, database_url, test_bundle, tmp_path
):
    register_bundle(database_url, test_bundle)
    queue = _private_queue()
    worker = _worker(start_worker, secret_env, queue)
    (item_id,) = _submit_bytes(database_url, {"clip.wav": encode(speech())}).values()
    tripwire = tmp_path / "unpickled"
    client = _client(secret_env["SER_BROKER_URL"])

    # A well-formed ser.infer task for a real pending item, and one whose argument is an
    # exploit: both pickled, which the worker must not deserialise.
    pickled = [
        _send(client, [[item_id]], serializer="pickle", queue=queue),
        _send(client, [Tripwire(tripwire)], serializer="pickle", queue=queue),
    ]
    refusals = _wait_for_log(
        worker,
        r"Received invalid task message: Refusing to deserialize untrusted content of type "
        r"pickle \(application/x-python-serialize\)\nThe message has been ignored and discarded",
        count=2,
    )

    assert len(refusals) == 2
    assert not tripwire.exists(), "the worker unpickled a message"
    log = worker.output()
    for task_id in pickled:
        assert f"Task ser.infer[{task_id}] received" not in log
    with session_scope(database_url) as session:
        assert session.get(SubmissionItem, item_id).status == "pending"
        assert session.scalar(select(func.count()).select_from(Prediction)) == 0

    # The same task as JSON runs: the serializer alone made the difference.
    accepted = _send(client, [[item_id]], queue=queue)
    (item,) = _wait_processed(database_url, [item_id]).values()
    assert item.status == "done"
    assert f"Task ser.infer[{accepted}] succeeded" in worker.output()
    assert not tripwire.exists()
    _assert_no_secret(worker.output())


def test_passwords_never_reach_logs_or_cli_output(
    secret_env, start_worker, database_url, test_bundle, tmp_path
):
    register_bundle(database_url, test_bundle)
    worker = _worker(start_worker, secret_env)
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "good.wav").write_bytes(encode(speech()))
    (clips / "bad.wav").write_bytes(b"not audio at all")

    upgrade = run_cli(secret_env, "db", "upgrade")
    submitted = run_cli(secret_env, "submit", str(clips), "--wait")
    status = run_cli(secret_env, "status", "--json")
    # Unreachable services, with the passwords in their URLs: the errors must still name them.
    no_db = {
        **secret_env,
        "SER_DATABASE_URL": f"postgresql+psycopg://postgres:{DB_SECRET}@127.0.0.1:1/ser",
    }
    no_broker = {**secret_env, "SER_BROKER_URL": f"redis://:{BROKER_SECRET}@127.0.0.1:1/0"}
    db_down = run_cli(no_db, "submit", str(clips))
    db_down_upgrade = run_cli(no_db, "db", "upgrade")
    broker_down = run_cli(no_broker, "submit", str(clips))

    assert upgrade.returncode == 0, upgrade.stderr
    assert submitted.returncode == 0, submitted.stderr
    assert "1 done, 1 failed" in submitted.stderr
    assert "not a readable audio file" in submitted.stderr
    assert status.returncode == 0 and json.loads(status.stdout)["state"] == "finished"
    assert db_down.returncode != 0 and "database unavailable" in db_down.stderr
    assert "127.0.0.1:1/ser" in db_down.stderr  # where it tried, without the credentials
    assert db_down_upgrade.returncode != 0 and "database unavailable" in db_down_upgrade.stderr
    assert broker_down.returncode != 0 and "broker unreachable" in broker_down.stderr
    assert worker.tasks_succeeded("ser.infer") >= 1
    for result in (upgrade, submitted, status, db_down, db_down_upgrade, broker_down):
        _assert_no_secret(result.stdout, result.stderr)
    _assert_no_secret(worker.output())

    # A worker whose database is down retries with the error in its log, not the password. It
    # listens on a queue of its own, so the task it keeps retrying reaches no other test.
    queue = _private_queue()
    stranded = start_worker(
        queue,
        1,
        SER_DATABASE_URL=no_db["SER_DATABASE_URL"],
        SER_BROKER_URL=secret_env["SER_BROKER_URL"],
    )
    _send(_client(secret_env["SER_BROKER_URL"]), [[1]], queue=queue)
    _wait_for_log(stranded, r"Retry in \d+s: OperationalError", timeout=60)
    _assert_no_secret(stranded.output())


def test_worker_decodes_stored_bytes_never_the_submitted_name(
    secret_env, start_worker, database_url, test_bundle, tmp_path
):
    register_bundle(database_url, test_bundle)
    queue = _private_queue()
    worker = _worker(start_worker, secret_env, queue)
    # A trap where the names point: were a worker to open a name (from its working directory,
    # the repository), it would read digital silence and fail the clip as "silent".
    trap = tmp_path / "trap.wav"
    trap.write_bytes(encode(np.zeros(24_000, np.float32)))
    names = [
        os.path.relpath(trap, REPO),  # ../../tmp/.../trap.wav
        str(trap),
        "../../../../../../../../etc/passwd",
        f"../{uuid.uuid4().hex}/missing.wav",
        "clips/../../../../../../../../../tmp/x.wav",
    ]
    assert names[0].startswith("../")
    clips = {name: encode(speech(f0=120 + 10 * i)) for i, name in enumerate(names)}

    ids = _submit_bytes(database_url, clips)
    _send(_client(secret_env["SER_BROKER_URL"]), [list(ids.values())], queue=queue)
    items = _wait_processed(database_url, list(ids.values()))

    for name, item_id in ids.items():
        item = items[item_id]
        assert (item.status, item.error_code) == ("done", None), (name, item.error)
        assert item.duration_s == pytest.approx(1.5, abs=0.05)
        assert item.filename == name  # stored and shown as given, used for nothing else
    assert trap.read_bytes() == encode(np.zeros(24_000, np.float32))
    _assert_no_secret(worker.output())


def _flac_claiming(seconds: float) -> bytes:
    """A real 1.5 s FLAC whose STREAMINFO says it lasts `seconds`."""
    flac = encode(speech(), fmt="FLAC")
    assert flac[:4] == b"fLaC" and flac[4] & 0x7F == 0  # STREAMINFO comes first
    # STREAMINFO bytes 10..17 (file 18..25): rate (20 bits), channels, depth, frames (36 bits).
    (packed,) = struct.unpack(">Q", flac[18:26])
    frames = int(seconds * 16_000)
    return flac[:18] + struct.pack(">Q", (packed >> 36 << 36) | frames) + flac[26:]


def _wav_claiming(data_bytes: int) -> bytes:
    """A real 1.5 s WAV whose header declares `data_bytes` of samples."""
    wav = encode(speech(f0=190))
    at = wav.index(b"data")
    riff = struct.pack("<I", at + data_bytes)  # everything after the 8-byte RIFF header
    return b"RIFF" + riff + wav[8 : at + 4] + struct.pack("<I", data_bytes) + wav[at + 8 :]


def _compressed_hour(minutes: int) -> bytes:
    """A genuine FLAC of `minutes` of a constant level: ~150 bytes per second of 48 kHz audio,
    hundreds of megabytes once decoded."""
    buffer = io.BytesIO()
    with sf.SoundFile(buffer, "w", 48_000, 1, format="FLAC", subtype="PCM_16") as f:
        block = np.full(48_000 * 60, 1000, np.int16)
        for _ in range(minutes):
            f.write(block)
    return buffer.getvalue()


def test_decompression_bombs_are_refused_from_the_header(
    secret_env, start_worker, database_url, test_bundle
):
    register_bundle(database_url, test_bundle)
    queue = _private_queue()
    worker = _worker(start_worker, secret_env, queue)
    client = _client(secret_env["SER_BROKER_URL"])
    # Warm up: TensorFlow and the model are loaded by the first clip, not counted below.
    warm = _submit_bytes(database_url, {"warm.wav": encode(speech())})
    _send(client, [list(warm.values())], queue=queue)
    assert _wait_processed(database_url, list(warm.values()))[warm["warm.wav"]].status == "done"
    peak_before = _pool_child_peak_rss_kb(worker)

    bombs = {
        "half-hour.flac": _compressed_hour(30),  # 270 kB, 345 MB of float32 once decoded
        "ten-hours.flac": _flac_claiming(10 * 3600),
        "huge-data.wav": _wav_claiming(0x7FFFFF00),
    }
    assert max(len(data) for data in bombs.values()) < 1_000_000
    ids = _submit_bytes(database_url, bombs)
    started = time.monotonic()
    _send(client, [list(ids.values())], queue=queue)
    items = _wait_processed(database_url, list(ids.values()), timeout=60)
    elapsed = time.monotonic() - started

    outcome = {name: (items[i].error_code, items[i].error) for name, i in ids.items()}
    assert outcome["half-hour.flac"] == ("too_long", "clip is 1800.0 s long; the maximum is 60 s")
    assert outcome["ten-hours.flac"] == ("too_long", "clip is 36000.0 s long; the maximum is 60 s")
    code, message = outcome["huge-data.wav"]
    assert code == "truncated" and "declares 2,147,483,392 bytes" in message
    # Decoding the half hour alone would take seconds and 345 MB more of resident memory.
    grown_mb = (_pool_child_peak_rss_kb(worker) - peak_before) / 1024
    assert grown_mb < 100, f"the worker's peak memory grew by {grown_mb:.0f} MB"
    assert elapsed < 20
    _assert_no_secret(worker.output())


# --- static checks: cheap, and each fails on the first offending line --------------------------

SOURCES = [
    path
    for package in ("ser_worker", "cli", "migrations")
    for path in sorted((REPO / package).rglob("*.py"))
]
SQL_CALLS = {"text", "execute", "exec_driver_sql", "executemany", "executescript"}


def _builds_a_string(node: ast.expr) -> bool:
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mod):
        return True
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("format", "join", "replace")
    )


def test_sql_is_never_built_from_strings():
    """Every statement is a SQLAlchemy construct or a constant: values travel as bound
    parameters, never spliced into SQL text with f-strings, %, + or .format."""
    assert SOURCES
    offenders = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            name = getattr(node.func, "attr", getattr(node.func, "id", None))
            if name in SQL_CALLS and _builds_a_string(node.args[0]):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


def test_no_credentials_are_written_in_code_or_config():
    shipped = [*SOURCES, REPO / "alembic.ini", REPO / "docker-compose.yml", REPO / "Dockerfile"]
    # user:password@ inside a URL, unless the password is an environment reference (${VAR}).
    credentials = re.compile(r"://[^/\s:@'\"]*:(?!\$\{)[^@\s/'\"]+@")
    found = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in shipped
        if path.is_file()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if credentials.search(line)
    ]
    assert found == []
