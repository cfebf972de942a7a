"""Faults the CLI meets on real processes (#18 items 4, 5, 6, 10, 12): servers that accept TCP and
never answer, a broker frozen in the middle of an enqueue or killed, first commands racing on a
fresh store, a full disk and a read-only store, and bundles that pass their CRCs but cannot
predict."""

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import redis
from sqlalchemy import select

from benchmarks.harness import BIN, REPO, child_env
from ser_worker.bundle import read_manifest, shipped_bundle_bytes
from ser_worker.service import store
from ser_worker.service.db.models import ModelVersion, Submission, SubmissionItem
from ser_worker.service.db.session import session_scope
from tests.service.conftest import TEST_DATA, _unavailable, run_cli
from tests.service.test_faults import RedisServer

# A peer that never answers must be given up within seconds (5 s timeouts, one retry).
GIVE_UP_S = 25


@pytest.fixture
def silent_peer() -> Iterator[int]:
    """A port where the kernel completes TCP handshakes and nobody ever reads or answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield listener.getsockname()[1]
    listener.close()


class FreezingProxy:
    """A TCP proxy to ``upstream`` that freezes the first time a client sends ``trigger``: from
    then on it forwards nothing either way (the server looks alive, TCP-wise, and never
    answers) until ``thaw()``, which drops the frozen connections and forwards new ones."""

    def __init__(self, upstream_port: int, trigger: bytes) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.trigger = trigger
        self.frozen = threading.Event()
        self._frozen_sockets: list[socket.socket] = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def thaw(self) -> None:
        self.frozen.clear()
        for sock in self._frozen_sockets:
            sock.close()
        self._frozen_sockets.clear()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream, timeout=5)
            server.settimeout(None)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, destination: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_client and self.trigger and self.trigger in data:
                    self.trigger = None  # once: after thaw() it forwards everything
                    self.frozen.set()
                if self.frozen.is_set():
                    self._frozen_sockets.extend((source, destination))
                    continue  # swallowed: the peer never hears of it
                destination.sendall(data)
        except OSError:
            pass
        for sock in (source, destination):
            try:
                sock.close()
            except OSError:
                pass


def _timed(env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = run_cli(env, *args, timeout=120)
    return result, time.monotonic() - started


def _folder(tmp_path: Path, count: int = 4) -> Path:
    folder = tmp_path / "clips"
    folder.mkdir()
    for clip in sorted(TEST_DATA.glob("*/*/*.flac"))[:count]:
        shutil.copy(clip, folder / clip.name)
    return folder


def _renamed(
    bundle: bytes, version: str, *, infinite_weight: bool = False, **members: bytes | None
) -> bytes:
    """The bundle under another version; ``members`` replace (bytes) or drop (None) files (a
    dropped ONNX export leaves the manifest too); ``infinite_weight``: the encoder's ensemble
    weight 1e400, which JSON readers take for infinity."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(bundle)) as source, zipfile.ZipFile(out, "w") as target:
        manifest = json.loads(source.read("manifest.json"))
        manifest["version"] = version
        for entry in manifest["models"].values():
            if entry.get("onnx") in members and members[entry["onnx"]] is None:
                entry["onnx"] = None
        text = json.dumps(manifest)
        if infinite_weight:
            weights = manifest["ensemble_weights"]
            first = json.dumps(weights["encoder"])
            text = text.replace(json.dumps(weights), json.dumps(weights).replace(first, "1e400", 1))
            assert "1e400" in text
        target.writestr("manifest.json", text)
        for info in source.infolist():
            if info.filename == "manifest.json":
                continue
            data = members.get(info.filename, source.read(info))
            if data is not None:
                target.writestr(info.filename, data)
    return out.getvalue()


def _register(
    database_url: str, bundle: bytes, *, activate: bool, manifest_of: bytes | None = None
) -> str:
    """``manifest_of``: the bundle whose manifest the row records (PostgreSQL's JSON column
    refuses an infinite weight; the bundle's own bytes are what activation reads)."""
    manifest = read_manifest(manifest_of or bundle)
    with session_scope(database_url) as session:
        store.register_version(session, bundle, manifest, source="trained", activate=activate)
    return manifest.version


def _active(database_url: str) -> list[str]:
    with session_scope(database_url) as session:
        return list(session.scalars(select(ModelVersion.version).where(ModelVersion.active)))


def _nan_weights(bundle: bytes, member: str) -> bytes:
    """The member's HDF5 weights with every value NaN: a valid file, valid CRCs, useless."""
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        data = io.BytesIO(archive.read(member))
    with h5py.File(data, "r+") as weights:

        def poison(_name, node):
            if isinstance(node, h5py.Dataset) and node.dtype.kind == "f":
                node[...] = np.nan

        weights.visititems(poison)
    return data.getvalue()


# 4. Servers that accept TCP and never answer.


def test_a_database_that_never_answers_is_given_up_within_seconds(tmp_path, silent_peer, redis_url):
    env = child_env(
        SER_DATABASE_URL=f"postgresql+psycopg://ser@127.0.0.1:{silent_peer}/ser",
        SER_BROKER_URL=redis_url,
        SER_DATA_DIR=str(tmp_path / "data"),
    )
    folder = _folder(tmp_path, 1)
    for args in (("status",), ("submit", str(folder)), ("db", "upgrade")):
        result, seconds = _timed(env, *args)
        assert result.returncode == 1, (args, result.stderr)
        assert seconds < GIVE_UP_S, (args, seconds)
        assert "did not answer" in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_a_broker_that_never_answers_is_given_up_within_seconds(
    tmp_path, silent_peer, database_url
):
    env = child_env(
        SER_DATABASE_URL=database_url,
        SER_BROKER_URL=f"redis://127.0.0.1:{silent_peer}/0",
        SER_DATA_DIR=str(tmp_path / "data"),
    )
    _register(database_url, _renamed(shipped_bundle_bytes(), "served"), activate=True)

    result, seconds = _timed(env, "submit", str(_folder(tmp_path, 1)))

    assert result.returncode == 1 and seconds < GIVE_UP_S, (seconds, result.stderr)
    assert "broker unreachable" in result.stderr and "Traceback" not in result.stderr


def test_a_broker_frozen_mid_enqueue_ends_with_a_message_and_loses_nothing(tmp_path, database_url):
    server = RedisServer(tmp_path / "redis", appendonly=False)
    upstream = int(server.url.rsplit(":", 1)[1].split("/")[0])
    proxy = FreezingProxy(upstream, trigger=b"LPUSH")
    env = child_env(
        SER_DATABASE_URL=database_url,
        SER_BROKER_URL=f"redis://127.0.0.1:{proxy.port}/0",
        SER_DATA_DIR=str(tmp_path / "data"),
        SER_BATCH_SIZE="1",
    )
    _register(database_url, _renamed(shipped_bundle_bytes(), "served"), activate=True)
    try:
        result, seconds = _timed(env, "submit", str(_folder(tmp_path, 4)))
        assert proxy.frozen.is_set()
        assert result.returncode == 1 and seconds < GIVE_UP_S, (seconds, result.stderr)
        assert "broker unreachable while enqueueing" in result.stderr
        assert "Traceback" not in result.stderr

        proxy.thaw()
        status = run_cli(env, "status")
        assert status.returncode == 0, status.stderr
        assert "never queued" in " ".join(status.stderr.split())
    finally:
        proxy.close()
        queued = _queued_item_ids(server.url)
        server.crash()
    with session_scope(database_url) as session:
        items = set(session.scalars(select(SubmissionItem.id)))
        enqueued = session.scalars(select(Submission.enqueued_at)).all()
    assert items and set(queued) == items  # every clip queued: none lost (a repeat is harmless)
    assert all(enqueued)


def _queued_item_ids(url: str) -> list[int]:
    with redis.Redis.from_url(url) as client:
        messages = client.lrange("inference", 0, -1)
    ids = []
    for message in messages:
        body = json.loads(base64.b64decode(json.loads(message)["body"]))
        ids.extend(body[0][0])
    return ids


# 5. Reads need no broker.


def test_reads_work_while_the_broker_is_down(tmp_path, database_url):
    server = RedisServer(tmp_path / "redis", appendonly=False)
    env = child_env(
        SER_DATABASE_URL=database_url,
        SER_BROKER_URL=server.url,
        SER_DATA_DIR=str(tmp_path / "data"),
    )
    _register(database_url, _renamed(shipped_bundle_bytes(), "served"), activate=True)
    submitted = run_cli(env, "submit", str(_folder(tmp_path, 2)))
    assert submitted.returncode == 0, submitted.stderr
    server.crash()

    for args in (
        ("status",),
        ("results",),
        ("models",),
        ("submissions",),
        ("runs",),
        ("evaluations",),
    ):
        result = run_cli(env, *args, timeout=60)
        assert result.returncode == 0, (args, result.stderr)
        assert "broker" not in result.stderr, (args, result.stderr)
    again = run_cli(env, "submit", str(tmp_path / "clips"), timeout=60)
    assert again.returncode == 1 and "broker unreachable" in again.stderr


# 6. First submits racing on a fresh store.


def _at_once(env: dict[str, str], commands: list[list[str]]) -> list[tuple[int, str]]:
    processes = [
        subprocess.Popen(
            [BIN / "ser-cli", *command],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in commands
    ]
    outcomes = []
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        outcomes.append((process.returncode, stderr))
    return outcomes


def test_three_first_submits_on_a_fresh_postgresql_all_succeed(tmp_path, service_env, database_url):
    folder = _folder(tmp_path, 3)
    outcomes = _at_once(
        service_env, [["submit", str(folder / name)] for name in os.listdir(folder)]
    )

    assert [code for code, _ in outcomes] == [0, 0, 0], outcomes
    assert not any("Error" in err or "Traceback" in err for _, err in outcomes), outcomes
    with session_scope(database_url) as session:
        versions = session.scalars(select(ModelVersion)).all()
    assert [(v.source, v.active) for v in versions] == [("shipped", True)]


def test_two_first_submits_on_a_fresh_embedded_home_both_succeed(tmp_path):
    env = child_env(HOME=str(tmp_path / "home"), XDG_DATA_HOME="", SER_TF_THREADS="1")
    folder = _folder(tmp_path, 2)
    names = sorted(os.listdir(folder))
    outcomes = _at_once(env, [["submit", str(folder / name)] for name in names])

    assert [code for code, _ in outcomes] == [0, 0], outcomes
    assert not any("Traceback" in err for _, err in outcomes), outcomes


# 12. Activation predicts a built-in clip first.


@pytest.mark.parametrize(
    "damage",
    ["nan_weights", "infinite_ensemble_weight", "weights_not_hdf5"],
)
def test_a_bundle_that_cannot_predict_is_not_activated(tmp_path, database_url, redis_url, damage):
    env = child_env(
        SER_DATABASE_URL=database_url,
        SER_BROKER_URL=redis_url,
        SER_DATA_DIR=str(tmp_path / "data"),
    )
    shipped = shipped_bundle_bytes()
    _register(database_url, _renamed(shipped, "serving"), activate=True)
    if damage == "nan_weights":
        bad = _renamed(
            shipped,
            "bad",
            **{"cnn1d.weights.h5": _nan_weights(shipped, "cnn1d.weights.h5")},
            **{"cnn1d.onnx": None},
        )
    elif damage == "infinite_ensemble_weight":
        bad = _renamed(shipped, "bad", infinite_weight=True)
    else:
        bad = _renamed(shipped, "bad", **{"cnn2d.weights.h5": os.urandom(4096)})
    _register(database_url, bad, activate=False, manifest_of=_renamed(shipped, "bad"))

    result = run_cli(env, "models", "--activate", "bad")

    assert result.returncode == 1, result.stderr
    assert "not activated, the active one is unchanged" in result.stderr
    expected = {
        "nan_weights": "gives non-finite probabilities on a test clip",
        "infinite_ensemble_weight": "cannot predict a test clip: ensemble weights",
        "weights_not_hdf5": "cannot load weights for cnn2d",
    }[damage]
    assert expected in result.stderr, result.stderr
    assert _active(database_url) == ["serving"]


def test_a_sound_bundle_is_activated_after_predicting(tmp_path, database_url, redis_url):
    env = child_env(
        SER_DATABASE_URL=database_url,
        SER_BROKER_URL=redis_url,
        SER_DATA_DIR=str(tmp_path / "data"),
    )
    shipped = shipped_bundle_bytes()
    _register(database_url, _renamed(shipped, "serving"), activate=True)
    _register(database_url, _renamed(shipped, "next"), activate=False)

    result = run_cli(env, "models", "--activate", "next")

    assert result.returncode == 0, result.stderr
    assert _active(database_url) == ["next"]


# 10. A server that answers and refuses.


def test_an_unknown_role_or_database_is_shown_with_the_reason(tmp_path, database_url, redis_url):
    server = database_url.split("@", 1)[1].split("/", 1)[0]
    user = database_url.split("://", 1)[1].split("@", 1)[0]
    for url, reason in (
        (f"postgresql+psycopg://no_such_role@{server}/test", 'role "no_such_role" does not exist'),
        (
            f"postgresql+psycopg://{user}@{server}/no_such_db",
            'database "no_such_db" does not exist',
        ),
    ):
        env = child_env(SER_DATABASE_URL=url, SER_BROKER_URL=redis_url)
        for args in (("status",), ("db", "upgrade")):
            result = run_cli(env, *args, timeout=60)
            assert result.returncode == 1, result.stderr
            assert reason in result.stderr, result.stderr
            assert "db upgrade" not in result.stderr and "Traceback" not in result.stderr


# 10. The disk and the data directory.


@pytest.fixture
def small_mount(tmp_path) -> Iterator[Path]:
    """A 4 MiB tmpfs of the test's own (needs root: a disk that really fills up)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
        ).returncode
    ):
        _unavailable("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_without_sql(tmp_path, small_mount):
    env = child_env(SER_DATA_DIR=str(small_mount / "ser"))
    result = run_cli(env, "submit", str(_folder(tmp_path, 1)), timeout=300)

    assert result.returncode == 1, result.stderr
    assert "disk is full" in result.stderr and "Free some disk space" in result.stderr
    assert "INSERT" not in result.stderr and "Traceback" not in result.stderr


def test_a_read_only_store_says_so(tmp_path, small_mount):
    env = child_env(SER_DATA_DIR=str(small_mount / "ser"))
    assert run_cli(env, "models").returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(small_mount)], check=True)

    result = run_cli(env, "status")

    assert result.returncode == 1
    assert "writable" in result.stderr and "Traceback" not in result.stderr
    assert "db upgrade" not in result.stderr


def test_an_unwritable_home_says_so(tmp_path):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        _unavailable("running as another user needs root and setpriv")
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    env = child_env(HOME=str(home), XDG_DATA_HOME="")
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", BIN / "ser-cli", "status"],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 1, result.stderr
    assert "cannot be created (Permission denied)" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_the_server_gives_up_on_a_vanished_client_within_a_minute(database_url):
    """A worker host cut off mid-task holds its transaction's locks until the server ends its
    session: every connection asks the server to probe its peer and to bound unacknowledged
    sends (PostgreSQL's defaults leave that to the kernel: hours)."""
    from sqlalchemy import text

    from ser_worker.service.db.session import get_engine

    with get_engine(database_url).connect() as connection:
        seconds = {
            name: int(connection.scalar(text(f"SHOW {name}")))
            for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count")
        }
        user_timeout_ms = int(connection.scalar(text("SHOW tcp_user_timeout")))
    probed = seconds["tcp_keepalives_idle"] + (
        seconds["tcp_keepalives_interval"] * seconds["tcp_keepalives_count"]
    )
    assert 0 < probed <= 60 and 0 < user_timeout_ms <= 60_000
