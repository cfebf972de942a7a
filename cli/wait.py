"""Talking to the services from the CLI: a check before anything is stored, progress bars, and
polling loops that sit out a database outage the way the workers do."""

import time
from collections.abc import Callable
from typing import TypeVar

import click
from kombu.exceptions import OperationalError as BrokerError
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy.exc import OperationalError as DatabaseError
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import Session

from cli import safe
from cli.render import console
from ser_worker.config import Settings, database_error_reason, database_location
from ser_worker.service import store
from ser_worker.service.celery_app import INFERENCE_QUEUE, app
from ser_worker.service.db.migrate import upgrade_database
from ser_worker.service.db.session import session_scope

POLL_SECONDS = 0.5
# How long `--wait` sees no progress before it asks whether any worker consumes the queue.
NO_WORKER_HINT_S = 10.0
T = TypeVar("T")


class ServiceError(click.ClickException):
    """The database or broker cannot be reached, or the store cannot serve the request."""


def check_services(settings: Settings) -> None:
    """Fail fast with a clear message instead of leaving a submission nobody will process."""
    try:
        if settings.database.startswith("sqlite"):
            # The embedded store builds (or updates) its own schema: there is no deploy step.
            upgrade_database()
        with session_scope() as session:
            store.ping(session)
    except (DatabaseError, ProgrammingError) as error:
        raise ServiceError(
            f"database unavailable or not migrated at {database_location(settings.database)} "
            f"({safe.url(settings.database)}): "
            f"{safe.scrub(database_error_reason(error), settings.database)}. "
            "Is it running? Run `ser-cli db upgrade` once."
        ) from None
    if not settings.embedded:
        try:
            with app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=5)
        except (BrokerError, OSError, TypeError, ValueError) as error:
            # kombu raises TypeError or ValueError for a URL it cannot parse (a non-numeric
            # port, a password given twice): still the broker's address, not a crash.
            # One helper masks every URL shown; the driver's message may quote the URL too.
            reason = safe.scrub(error, settings.broker_url)
            raise ServiceError(
                f"broker unreachable ({safe.url(settings.broker_url)}): {reason}"
            ) from None


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
