"""Talking to the services from the CLI: a check before anything is stored, progress bars, and
polling loops that sit out a database outage the way the workers do."""

import time
from collections.abc import Callable
from typing import TypeVar

import click
from kombu.exceptions import OperationalError as BrokerError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.exc import OperationalError as DatabaseError
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from cli import safe
from cli.render import console
from ser_worker.config import Settings, database_error_reason, database_location, get_settings
from ser_worker.service import store
from ser_worker.service.celery_app import BROKER_TIMEOUT_S, INFERENCE_QUEUE, app
from ser_worker.service.db.migrate import upgrade_database
from ser_worker.service.db.session import (
    StoreError,
    check_sqlite_file,
    embedded_store_lock,
    session_scope,
)

POLL_SECONDS = 0.5
# How long `--wait` sees no progress before it asks whether any worker consumes the queue.
NO_WORKER_HINT_S = 10.0
T = TypeVar("T")


class ServiceError(click.ClickException):
    """The database or broker cannot be reached, or the store cannot serve the request."""


# What the driver says, and what the user should do about it. The first match wins; the
# default (a server not reachable at all) suggests checking it runs.
_DATABASE_HINTS = (
    (
        ("no such table", "no such column", "undefinedtable", "undefinedcolumn"),
        "The schema is not migrated: run `ser-cli db upgrade` once. ",
    ),
    # The server answered and refused: its reason says what to fix (a role, a database name).
    (("does not exist", "authentication failed", "no pg_hba.conf entry"), ""),
    (("timeout expired", "timed out"), "It accepted the connection but did not answer. "),
    (
        ("readonly database", "read-only", "unable to open database file"),
        "The store cannot be written: give this user write access to it and its folder, or set "
        "SER_DATA_DIR to a writable folder. ",
    ),
    (("disk is full", "no space left"), "Free some disk space and run the command again. "),
    (
        ("not a database", "malformed", "file is encrypted"),
        "The store is corrupt: restore it from a backup, or move it aside to start a new one. ",
    ),
)


def describe_database_error(error: BaseException, database_url: str) -> str:
    """One line for a database failure: where, the driver's reason (no SQL, no password), and
    the hint that fits it."""
    if isinstance(error, StoreError):
        return str(error)
    # A failure inside a savepoint can undo the savepoint too (SQLite rolls back the whole
    # transaction when the disk is full): the first database error is the one that says why.
    while isinstance(error.__context__, SQLAlchemyError):
        error = error.__context__
    reason = safe.scrub(database_error_reason(error), database_url)
    lowered = f"{type(getattr(error, 'orig', error)).__name__} {reason}".lower()
    hint = "Is it running and reachable? "
    for needles, advice in _DATABASE_HINTS:
        if any(needle in lowered for needle in needles):
            hint = advice
            break
    where = f"{database_location(database_url)} ({safe.url(database_url)})"
    return f"database unavailable at {where}: {reason}. {hint}".rstrip()


def check_services(settings: Settings, *, broker: bool = True) -> None:
    """Fail fast with a clear message instead of leaving a submission nobody will process.

    ``broker=False`` for commands that only read the database: they work during a broker outage.
    """
    try:
        if settings.database.startswith("sqlite"):
            # The embedded store builds (or updates) its own schema: there is no deploy step.
            # Two first commands at once take turns; a damaged file is reported, not rebuilt.
            with embedded_store_lock(settings.database):
                check_sqlite_file(settings.database)
                upgrade_database()
        with session_scope() as session:
            store.ping(session)
    except (StoreError, SQLAlchemyError) as error:
        raise ServiceError(describe_database_error(error, settings.database)) from None
    if broker and not settings.embedded:
        check_broker(settings)


def check_broker(settings: Settings) -> None:
    try:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_S)
    except (BrokerError, OSError, TypeError, ValueError, KeyError, ImportError) as error:
        # kombu raises TypeError or ValueError for a URL it cannot parse (a non-numeric
        # port, a password given twice), KeyError for an unknown scheme: still the broker's
        # address, not a crash. The driver's message may quote the URL too.
        reason = safe.scrub(error, settings.broker_url)
        if isinstance(error, KeyError):
            reason = f"{reason} (SER_BROKER_URL must be redis://host:port/db)"
        raise ServiceError(
            f"broker unreachable ({safe.url(settings.broker_url)}): {reason}"
        ) from None


class GuardedGroup(click.Group):
    """A database failure in the middle of any command (disk full, the store damaged or
    locked meanwhile) ends in one clear line, never in a traceback that dumps SQL and values."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (StoreError, SQLAlchemyError) as error:
            url = get_settings().database
            raise ServiceError(describe_database_error(error, url)) from None


def progress(visible: bool = True) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not visible or not console.is_terminal,
    )


def poll(read: Callable[[Session], T]) -> T:
    """``read(session)`` for a waiting loop, waiting out a database outage as the workers do."""
    warned = False
    while True:
        try:
            with session_scope() as session:
                return read(session)
        except DatabaseError as error:
            if not warned:
                console.print(
                    f"[yellow]database unavailable ({type(error.orig).__name__}); "
                    "waiting for it to come back[/]"
                )
                warned = True
            time.sleep(POLL_SECONDS * 4)


def poll_until(read: Callable[[Session], T | None], *, every: float = POLL_SECONDS) -> T:
    """Poll ``read`` until it returns something other than None."""
    while (value := poll(read)) is None:
        time.sleep(every)
    return value


def wait_for_items(submission_id: str) -> None:
    with session_scope() as session:
        total = sum(store.status_counts(session, submission_id).values())
    hint_at = time.monotonic() + NO_WORKER_HINT_S
    with progress() as bar:
        # Until the first clip is done, a worker may be loading the model: say so.
        task = bar.add_task("waiting for a worker (loading the model…)", total=total)
        while True:
            counts = poll(lambda session: store.status_counts(session, submission_id))
            done = total - counts.get("pending", 0)
            bar.update(task, completed=done, description="waiting" if done else None)
            if not counts.get("pending"):
                return
            if hint_at is not None and not done and time.monotonic() > hint_at:
                hint_at = None
                hint_if_no_worker(INFERENCE_QUEUE)
            time.sleep(POLL_SECONDS)


def hint_if_no_worker(queue: str) -> None:
    """Say so when nothing consumes ``queue``: the work waits for a worker that is not there."""
    from ser_worker.service.celery_app import workers_consuming

    if workers_consuming(queue) == []:
        console.print(
            f"[yellow]no worker consumes the {queue!r} queue: the clips wait until one starts, "
            f"e.g. `celery -A ser_worker worker -Q {queue} -l INFO -n {queue}@%h`[/]"
        )
