"""Thin Celery tasks: they take ids, load rows, call the stages and write in one transaction."""

from sqlalchemy.exc import InterfaceError, OperationalError

# Only faults that go away by themselves are retried: a lost or refused database connection.
TRANSIENT_ERRORS = (OperationalError, InterfaceError)
RETRY_OPTIONS = {
    "autoretry_for": TRANSIENT_ERRORS,
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 20,
}

from ser_worker.service.tasks import inference, timeline, training  # noqa: E402  (register them)

__all__ = ["inference", "timeline", "training", "RETRY_OPTIONS", "TRANSIENT_ERRORS"]
