"""Engines and transactions. One engine per URL per process, created after fork on first use.

Every connection has bounded waits: a server that accepts TCP and never answers must end in a
clear error within seconds, not hang a command (or a worker) for as long as the kernel keeps the
socket. The embedded SQLite store is checked before use, so a damaged or emptied file is reported
instead of being rebuilt empty over the user's history.
"""

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from ser_worker.config import get_settings

# Connecting includes PostgreSQL's startup and authentication exchange (libpq's rule).
CONNECT_TIMEOUT_S = 5
# Keepalives find a peer that vanished (host lost, network cut) while a query is in flight;
# tcp_user_timeout bounds how long sent bytes may stay unacknowledged.
_PG_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}
# The same bounds on the server's side of each connection (PostgreSQL 12+ session settings):
# a worker host cut off in the middle of a task holds its transaction's locks, and the server
# learns of it only from its own keepalives or unacknowledged sends, by default after hours.
# With these, its session ends within about half a minute, and another worker takes over the
# redelivered task instead of waiting on those locks (benchmarks/hosts.py cuts a link mid-run).
_PG_SERVER_BOUNDS = (
    "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3 "
    "-c tcp_user_timeout=30000"
)
# SQLite: wait for another process's write lock instead of failing at once.
SQLITE_BUSY_S = 30
SUPPORTED_BACKENDS = ("sqlite", "postgresql")


class StoreError(RuntimeError):
    """The configured database cannot be used as it is; the message says why and what to do."""


def check_database_url(url: str) -> None:
    """Raise StoreError unless ``url`` is a SQLite or PostgreSQL URL that SQLAlchemy can parse."""
    try:
        parsed = make_url(url)
        port = parsed.port  # a non-numeric port fails here
    except (ArgumentError, ValueError) as error:
        raise StoreError(f"SER_DATABASE_URL is not a usable database URL: {error}") from None
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_BACKENDS:
        raise StoreError(
            f"SER_DATABASE_URL names a {backend!r} database; ser supports PostgreSQL "
            "(postgresql+psycopg://user@host:5432/name) and SQLite (sqlite:///path)"
        )
    if port is not None and not 0 < port < 65536:
        raise StoreError(f"SER_DATABASE_URL has port {port}, outside 1-65535")


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL; None for anything else (or an in-memory database)."""
    if not url.startswith("sqlite"):
        return None
    database = make_url(url).database
    return Path(database) if database and database != ":memory:" else None


@lru_cache(maxsize=4)
def get_engine(url: str | None = None) -> Engine:
    url = url or get_settings().database
    check_database_url(url)
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if path is not None:
            _make_data_dir(path.parent)
        try:
            engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_S})
        except (ArgumentError, NoSuchModuleError, ImportError) as error:
            raise StoreError(f"SER_DATABASE_URL cannot be used: {error}") from None
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # Values given in the URL's query (?connect_timeout=20) win over these defaults.
    query = make_url(url).query
    bounded = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        **_PG_KEEPALIVES,
        "options": _PG_SERVER_BOUNDS,
    }
    connect_args = {key: value for key, value in bounded.items() if key not in query}
    try:
        return create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    except (ArgumentError, NoSuchModuleError, ImportError) as error:
        raise StoreError(f"SER_DATABASE_URL cannot be used: {error}") from None


def _make_data_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise StoreError(
            f"the data directory {directory} is a file, not a folder: set SER_DATA_DIR to a "
            "folder (it is created if missing)"
        ) from None
    except NotADirectoryError:
        raise StoreError(
            f"the data directory {directory} cannot be created: a part of its path is a file; "
            "set SER_DATA_DIR to a folder"
        ) from None
    except OSError as error:
        raise StoreError(
            f"the data directory {directory} cannot be created ({error.strerror}): set "
            "SER_DATA_DIR to a writable folder"
        ) from None


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


@contextmanager
def embedded_store_lock(url: str) -> Iterator[None]:
    """Hold an exclusive lock beside the SQLite file: two first commands at once must not both
    create the schema (one would fail with "table already exists")."""
    path = sqlite_path(url)
    if path is None:
        yield
        return
    _make_data_dir(path.parent)
    lock_path = path.with_name(f".{path.name}.lock")
    try:
        handle = open(lock_path, "a")  # noqa: SIM115 - held for the block
    except OSError as error:
        raise StoreError(
            f"cannot write in the data directory {path.parent} ({error.strerror}): set "
            "SER_DATA_DIR to a writable folder"
        ) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_sqlite_file(url: str) -> None:
    """Raise StoreError if the store file exists but cannot be the store: empty (0 bytes: SQLite
    would silently start a new, empty history in it) or not a SQLite database at all."""
    path = sqlite_path(url)
    if path is None or not path.exists():
        return
    if path.is_dir():
        raise StoreError(f"the store {path} is a folder, not a SQLite file")
    size = path.stat().st_size
    if size == 0:
        raise StoreError(
            f"the store {path} is empty (0 bytes): its history is gone. Restore it from a "
            "backup, or move it aside to start a new store"
        )
    with open(path, "rb") as f:
        header = f.read(16)
    if header != b"SQLite format 3\x00":
        raise StoreError(
            f"the store {path} is not a SQLite database (corrupt or overwritten). Restore it "
            "from a backup, or move it aside to start a new store"
        )


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """One transaction: committed when the block ends, rolled back if it raises."""
    factory = sessionmaker(get_engine(url), expire_on_commit=False)
    with factory.begin() as session:
        yield session
