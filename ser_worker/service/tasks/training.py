"""Training: fit the models on labelled clips from the store, evaluate on the held-out split,
register the bundle as a new model version and promote it only when it beats the active one on
the same test clips. A run that dies half-way registers nothing: the version row, the run's
result and the promotion are written in one transaction at the very end."""

import logging
from typing import Any

from ser_worker.config import get_settings
from ser_worker.service import pipeline, store
from ser_worker.service.celery_app import app
from ser_worker.service.db.session import session_scope
from ser_worker.service.tasks import RETRY_OPTIONS

log = logging.getLogger(__name__)


@app.task(name="ser.train", **RETRY_OPTIONS)
def train(run_id: int) -> dict[str, Any]:
    with session_scope() as session:
        # A redelivered run (its worker died) starts again from scratch: nothing was registered.
        status = store.claim_run(session, run_id)
    if status != "running":
        return {"run": run_id, "status": status}
    try:
        return _execute(run_id)
    except Exception as error:
        with session_scope() as session:
            store.fail_run(session, run_id, error)
        raise


@app.task(name="ser.retrain", **RETRY_OPTIONS)
def retrain() -> dict[str, Any]:
    """Scheduled: retrain on every labelled clip in the store, unless nothing new arrived."""
    params = {"epochs": get_settings().train_epochs, "split": "speaker", "promote": "auto"}
    with session_scope() as session:
        run_id, nothing_new = store.schedule_run(session, params)
    if nothing_new:
        log.info("retraining skipped: no labelled clip arrived since the last run")
        return {"run": run_id, "status": "skipped"}
    return train(run_id)


def _execute(run_id: int) -> dict[str, Any]:
    with session_scope() as session:
        params, data = pipeline.load_run(session, run_id)
    trained = pipeline.train_run(run_id, params, data)
    with session_scope() as session:
        # Locked until the registration commits: when the broker delivered this run twice (its
        # visibility timeout ran out while it trained), the second to finish registers nothing.
        run = store.locked_run(session, run_id)
        if run.status == "succeeded":
            log.warning("run %s: another delivery of this run already registered it", run_id)
            return {"run": run_id, "status": run.status, "duplicate": True}
        return pipeline.register_trained(session, run, trained, params.get("promote", "auto"))
