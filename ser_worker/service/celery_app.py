"""The Celery application: queues, routes, schedule and the delivery guarantees.

Only light imports here: the prefork parent imports this module, and TensorFlow must not be
loaded before the fork (it is not fork-safe). Tasks import the heavy stages inside their bodies.
"""

from celery import Celery
from celery.signals import worker_process_init
from kombu import Queue

from ser_worker.config import SettingsError, get_settings

INFERENCE_QUEUE = "inference"
TRAINING_QUEUE = "training"
# Seconds a broker may take to accept a connection or answer a command.
BROKER_TIMEOUT_S = 5.0

try:
    settings = get_settings()
except SettingsError as error:
    # A worker (or beat) started with a bad SER_* value: one line naming it, not a traceback.
    raise SystemExit(f"Error: {error}") from None
app = Celery("ser_worker", include=["ser_worker.service.tasks"])
app.conf.update(
    # No broker configured: the embedded mode runs every task in the calling process.
    broker_url=settings.broker_url or "memory://localhost/",
    task_always_eager=settings.embedded,
    task_eager_propagates=True,
    # JSON only: a worker must never unpickle what a client sent.
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    # A task is acknowledged after it ran, and a worker that dies mid-task gives it back.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    # A whole worker killed (host lost, SIGKILL) cannot give its task back: Redis hands it to
    # another worker after this timeout. Above the longest task (a training run), or a task
    # still running is delivered a second time; the tasks make that harmless, not free.
    # Bounded socket waits: a broker that accepts TCP and never answers (frozen, half-open)
    # ends a publish or a check with an error within seconds instead of hanging for ever.
    broker_transport_options={
        "visibility_timeout": settings.visibility_timeout_s,
        "socket_connect_timeout": BROKER_TIMEOUT_S,
        "socket_timeout": BROKER_TIMEOUT_S,
        # Workers look for tasks whose visibility timeout ran out on every scan of this period;
        # kombu's default (10 s x throttle 10) let a lost host's task wait 100 s past it.
        "unacked_restore_interval": max(1.0, min(10.0, settings.visibility_timeout_s / 2)),
        "unacked_restore_throttle": 1,
    },
    broker_connection_timeout=BROKER_TIMEOUT_S,
    # A publish to a broker that stopped answering is tried twice, not four times.
    task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 1},
    task_queues=(Queue(INFERENCE_QUEUE), Queue(TRAINING_QUEUE)),
    task_default_queue=INFERENCE_QUEUE,
    task_routes={"ser.train": {"queue": TRAINING_QUEUE}, "ser.retrain": {"queue": TRAINING_QUEUE}},
    beat_schedule={
        "retrain": {"task": "ser.retrain", "schedule": settings.retrain_every_s},
    },
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@worker_process_init.connect
def _warm_up_child(**_kwargs) -> None:
    """Load the active bundle in each child once, after the fork, not on the first clip."""
    from ser_worker.service import runtime

    runtime.warm_up()


def workers_consuming(queue: str, timeout: float = 1.0) -> list[str] | None:
    """Names of the workers that answer a ping and consume ``queue``: [] means work sent there
    waits for nobody; None when the broker cannot be asked (embedded mode, or it is down)."""
    if settings.embedded:
        return None
    try:
        replies = app.control.inspect(timeout=timeout).active_queues() or {}
    except Exception:  # a hint must never break the waiting it annotates
        return None
    return sorted(
        worker
        for worker, queues in replies.items()
        if any(entry.get("name") == queue for entry in queues or ())
    )
