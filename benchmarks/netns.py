"""Three hosts on one machine for benchmarks/hosts.py and tests/service/test_hosts.py: Linux
network namespaces on a private test network (10.77.0.0/24, addresses that exist only inside
these namespaces). ``db`` runs a private redis-server and a private PostgreSQL cluster (initdb in
a temporary folder) behind a bridge; ``h1`` and ``h2`` are worker hosts, each joined to the
bridge by a veth pair, each worker with its own data folder. The root namespace (the submitting
``ser-cli``) reaches Redis and PostgreSQL over their Unix sockets, so no address is added outside
the namespaces.

PostgreSQL runs with TCP keepalives of a few seconds: a worker cut off in the middle of a
transaction leaves no RST behind, and only a keepalive lets the server drop its row locks
(otherwise the task's second delivery waits on them for the kernel's default two hours).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from benchmarks.harness import BIN, REPO, Worker, child_env, migrate

SUBNET = "10.77.0"
SERVICES_IP = f"{SUBNET}.1"
HOST_IPS = {"h1": f"{SUBNET}.11", "h2": f"{SUBNET}.12"}
PG_USER = "postgres"  # the cluster runs as this system user: PostgreSQL refuses root
DATABASE = "ser"
# Redis databases: the 1-host worker set, the 2-host set, the link-cut set.
DB_ONE, DB_TWO, DB_CUT = 0, 1, 2
KEEPALIVE = {
    "tcp_keepalives_idle": "2",
    "tcp_keepalives_interval": "1",
    "tcp_keepalives_count": "3",
}


def _run(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


def unavailable() -> str | None:
    """Why this machine cannot run the hosts set-up, or None when it can."""
    for tool in ("ip", "redis-server", "initdb", "postgres", "runuser"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        return f"no {PG_USER!r} system user to run PostgreSQL as"
    probe = f"serprobe{uuid.uuid4().hex[:6]}"
    try:
        _run("ip", "netns", "add", probe)
        _run("ip", "-n", probe, "link", "add", "br0", "type", "bridge")
    except (RuntimeError, subprocess.TimeoutExpired, OSError) as error:
        return f"ip netns is not permitted here: {error}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class Hosts:
    """The three namespaces, their links and the services of ``db``; removed on exit."""

    def __init__(self, workdir: Path) -> None:
        tag = uuid.uuid4().hex[:6]
        self.ns = {role: f"ser{tag}-{role}" for role in ("db", "h1", "h2")}
        # Not under the caller's private work folder: PostgreSQL's user must reach its files.
        self.dir = Path(tempfile.mkdtemp(prefix="ser-hosts-"))
        self.workdir = workdir
        self.services: list[subprocess.Popen] = []
        self.workers: list[Worker] = []

    # --- set-up ---------------------------------------------------------------------------------

    def __enter__(self) -> Hosts:
        try:
            self._network()
            self._redis()
            self._postgres()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for worker in self.workers:
            self.kill(worker)
        for proc in reversed(self.services):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown; Redis exits too
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for name in self.ns.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        for log in self.dir.glob("*.log"):  # kept in the caller's work folder
            shutil.copy(log, self.workdir / f"hosts-{log.name}")
        shutil.rmtree(self.dir, ignore_errors=True)

    def _network(self) -> None:
        db = self.ns["db"]
        for name in self.ns.values():
            _run("ip", "netns", "add", name)
            _run("ip", "-n", name, "link", "set", "lo", "up")
        _run("ip", "-n", db, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", db, "addr", "add", f"{SERVICES_IP}/24", "dev", "br0")
        _run("ip", "-n", db, "link", "set", "br0", "up")
        for host, address in HOST_IPS.items():
            ns = self.ns[host]
            _run(
                "ip",
                "-n",
                db,
                "link",
                "add",
                host,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
            _run("ip", "-n", db, "link", "set", host, "master", "br0", "up")
            _run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")

    def in_ns(self, role: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[role]]

    def _redis(self) -> None:
        self.redis_socket = self.dir / "redis.sock"
        log = (self.dir / "redis.log").open("w")
        self.services.append(
            subprocess.Popen(
                [
                    *self.in_ns("db"),
                    "redis-server",
                    "--bind",
                    SERVICES_IP,
                    "--port",
                    "6379",
                    "--unixsocket",
                    str(self.redis_socket),
                    "--unixsocketperm",
                    "770",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    # Reachable only inside these namespaces; the workers come from the bridge.
                    "--protected-mode",
                    "no",
                    "--dir",
                    str(self.dir),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        _wait(lambda: self.redis_socket.exists(), 20, "redis-server")

    def _postgres(self) -> None:
        data, sockets = self.dir / "pg", self.dir / "pgsock"
        sockets.mkdir()
        user = pwd.getpwnam(PG_USER)
        for path in (self.dir, sockets):
            os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(self.dir, 0o755)
        as_pg = ["runuser", "-u", PG_USER, "--"]
        _run(*as_pg, "initdb", "-D", str(data), "-A", "trust", "-U", PG_USER, "--no-sync")
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {SUBNET}.0/24 trust\n")
        settings = {
            "listen_addresses": SERVICES_IP,
            "unix_socket_directories": str(sockets),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "64MB",
            **KEEPALIVE,
        }
        options = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
        self.services.append(
            subprocess.Popen(
                [*self.in_ns("db"), *as_pg, "postgres", "-D", str(data), *options],
                stdout=(self.dir / "postgres.log").open("w"),
                stderr=subprocess.STDOUT,
            )
        )
        self.pg_socket = sockets
        _wait(lambda: (sockets / ".s.PGSQL.5432").exists(), 60, "PostgreSQL")
        import psycopg

        admin = f"postgresql://{PG_USER}@/postgres?host={sockets}"
        for _ in range(100):  # the socket appears a moment before connections are accepted
            with contextlib.suppress(psycopg.OperationalError):
                with psycopg.connect(admin, autocommit=True) as connection:
                    connection.execute(f'CREATE DATABASE "{DATABASE}"')
                break
            time.sleep(0.1)
        migrate(self.root_database_url)

    # --- addresses ------------------------------------------------------------------------------

    @property
    def root_database_url(self) -> str:
        return f"postgresql+psycopg://{PG_USER}@/{DATABASE}?host={self.pg_socket}"

    def root_env(self, redis_db: int, **extra: str) -> dict[str, str]:
        """The root namespace's view: both services over their Unix sockets."""
        return child_env(
            SER_DATABASE_URL=self.root_database_url,
            SER_BROKER_URL=f"redis+socket://{self.redis_socket}?virtual_host={redis_db}",
            SER_DATA_DIR=str(self.dir / "root-data"),
            **extra,
        )

    def host_env(self, host: str, redis_db: int, **extra: str) -> dict[str, str]:
        """A worker host's view: both services over the test network; its own data folder."""
        return child_env(
            SER_DATABASE_URL=f"postgresql+psycopg://{PG_USER}@{SERVICES_IP}:5432/{DATABASE}",
            SER_BROKER_URL=f"redis://{SERVICES_IP}:6379/{redis_db}",
            SER_DATA_DIR=str(self.dir / f"{host}-data-{uuid.uuid4().hex[:4]}"),
            SER_TF_THREADS="1",
            OMP_NUM_THREADS="1",
            **extra,
        )

    # --- workers, links, submissions ------------------------------------------------------------

    def worker(self, host: str, redis_db: int, **extra: str) -> Worker:
        log = self.dir / f"worker-{host}-{len(self.workers)}.log"
        worker = Worker(self.host_env(host, redis_db, **extra), log, prefix=self.in_ns(host))
        self.workers.append(worker)
        return worker

    def kill(self, worker: Worker) -> None:
        """SIGKILL: a worker whose link is cut would wait on its sockets in a warm shutdown."""
        if worker.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.process.pid, signal.SIGKILL)
            worker.process.wait()

    def link(self, host: str, up: bool) -> None:
        _run("ip", "-n", self.ns[host], "link", "set", "eth0", "up" if up else "down")

    def submit(self, paths: Sequence[Path], redis_db: int, *, wait: bool, **extra: str) -> dict:
        args = [str(BIN / "ser-cli"), "submit", *map(str, paths), "--json", "--force"]
        if wait:
            args.append("--wait")
        started = time.time()
        proc = subprocess.run(
            args,
            cwd=REPO,
            env=self.root_env(redis_db, **extra),
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"ser-cli submit failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
            )

        summary = json.loads(proc.stdout[proc.stdout.index("{") :])
        return {"started": started, "wall": time.time() - started, "summary": summary}

    def items(self, submission: str) -> list[tuple[str, float | None]]:
        from sqlalchemy import select

        from ser_worker.service.db.models import SubmissionItem
        from ser_worker.service.db.session import session_scope

        with session_scope(self.root_database_url) as session:
            rows = session.execute(
                select(SubmissionItem.status, SubmissionItem.processed_at).where(
                    SubmissionItem.submission_id == submission
                )
            ).all()
        return [(status, at.timestamp() if at else None) for status, at in rows]

    def wait_done(self, submission: str, timeout: float) -> list[tuple[str, float | None]]:
        deadline = time.time() + timeout
        while True:
            items = self.items(submission)
            if items and all(status != "pending" for status, _ in items):
                return items
            if time.time() > deadline:
                return items
            time.sleep(0.1)

    def register(self, bundle: bytes) -> None:
        from ser_worker.bundle import read_manifest
        from ser_worker.service import store
        from ser_worker.service.db.session import session_scope

        with session_scope(self.root_database_url) as session:
            store.register_version(
                session, bundle, read_manifest(bundle), source="trained", activate=True
            )


def _wait(ready, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not ready():
        if time.time() > deadline:
            raise RuntimeError(f"{what} did not start in {timeout:.0f} s")
        time.sleep(0.05)
