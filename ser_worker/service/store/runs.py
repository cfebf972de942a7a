"""Training runs: created by `ser-cli train` or the schedule, claimed and finished by a worker.

A run's rows move queued -> running -> succeeded/failed (or straight to skipped); a redelivered
run is claimed again and starts from scratch, because nothing is registered before it succeeds.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ser_worker.service.db.models import ModelVersion, SubmissionItem, TrainingRun, utcnow
from ser_worker.service.store.submissions import ClipUpload, create_submission

FINISHED = ("succeeded", "failed", "skipped")
# Progress lines a run keeps (in its params row, so no schema change): enough for a waiting
# client that polls every few seconds never to miss one, few enough to keep the row small.
PROGRESS_KEPT = 50
# What `ser-cli runs` shows of each model's test scores (the run keeps them all).
RUN_METRICS = ("accuracy", "macro_f1", "n")


@dataclass(frozen=True)
class RunOutcome:
    """What `ser-cli train --wait` reports of a run."""

    status: str
    error: str | None
    version: str | None
    metrics: dict[str, Any] | None
    promoted: bool
    replaced: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in ("succeeded", "failed")


def create_training_run(
    session: Session, uploads: Sequence[ClipUpload], *, label_scheme: str, params: dict[str, Any]
) -> int:
    """Store the clips as a "train" submission and queue a run on exactly those clips."""
    submission = create_submission(
        session, uploads, kind="train", label_scheme=label_scheme, model_version_id=None
    )
    run = TrainingRun(trigger="cli", submission_id=submission.id, params=params)
    session.add(run)
    session.flush()
    return run.id


def run_outcome(session: Session, run_id: int) -> RunOutcome:
    run = session.get(TrainingRun, run_id)
    version = session.get(ModelVersion, run.model_version_id) if run.model_version_id else None
    return RunOutcome(
        status=run.status,
        error=run.error,
        version=version.version if version else None,
        metrics=run.metrics,
        promoted=run.promoted,
        replaced=(run.metrics or {}).get("replaced"),
    )


def claim_run(session: Session, run_id: int) -> str:
    """Mark the run running and say "running"; or its final status ("missing" if none)."""
    run = session.get(TrainingRun, run_id)
    if run is None:
        return "missing"
    if run.status in FINISHED:
        return run.status
    run.status = "running"
    # A redelivered run starts from scratch, and so does what it reports.
    run.params = {key: value for key, value in run.params.items() if key not in _REPORTED}
    return run.status


def fail_run(session: Session, run_id: int, error: BaseException) -> None:
    run = session.get(TrainingRun, run_id)
    if run.status != "succeeded":  # a duplicate delivery's failure undoes no success
        run.status, run.error, run.finished_at = (
            "failed",
            f"{type(error).__name__}: {error}",
            utcnow(),
        )


def schedule_run(session: Session, params: dict[str, Any]) -> tuple[int, bool]:
    """A scheduled run on every labelled clip: (its id, whether it is skipped as nothing new)."""
    cutoff = session.scalar(select(func.max(SubmissionItem.id)).where(*_labelled()))
    last_cutoff = session.scalar(
        select(func.max(TrainingRun.data_cutoff)).where(TrainingRun.status == "succeeded")
    )
    nothing_new = cutoff is None or (last_cutoff is not None and cutoff <= last_cutoff)
    run = TrainingRun(
        trigger="schedule",
        status="skipped" if nothing_new else "queued",
        params=params,
        data_cutoff=cutoff,
        finished_at=utcnow() if nothing_new else None,
    )
    session.add(run)
    session.flush()
    return run.id, nothing_new


def labelled_items(session: Session, run: TrainingRun) -> list[SubmissionItem]:
    """The run's training items in order: its own submission's, or every labelled clip up to
    the cutoff of a scheduled run. Sets a CLI run's cutoff, so the schedule skips its clips."""
    query = select(SubmissionItem).where(*_labelled())
    if run.submission_id is not None:
        query = query.where(SubmissionItem.submission_id == run.submission_id)
    else:
        query = query.where(SubmissionItem.id <= run.data_cutoff)
    items = list(session.scalars(query.order_by(SubmissionItem.id)))
    if run.data_cutoff is None:
        run.data_cutoff = session.scalar(
            select(func.max(SubmissionItem.id)).where(
                SubmissionItem.submission_id == run.submission_id
            )
        )
    return items


def _labelled():
    return SubmissionItem.true_emotion.is_not(None), SubmissionItem.sha256.is_not(None)


def locked_run(session: Session, run_id: int) -> TrainingRun:
    """The run, row-locked until the transaction ends: of two deliveries finishing the same run,
    the second waits and then sees the first one's success."""
    return session.get(TrainingRun, run_id, with_for_update=True)


def finish_run(
    session: Session,
    run: TrainingRun,
    version: ModelVersion,
    *,
    metrics: dict[str, Any],
    promoted: bool,
) -> None:
    run.status, run.finished_at = "succeeded", utcnow()
    run.metrics = metrics
    run.model_version_id, run.promoted = version.id, promoted


# --- what a run reports while it trains, and what `ser-cli runs` shows ------------------------

_REPORTED = ("progress", "split_made")


def record_progress(session: Session, run_id: int, message: str) -> None:
    """Append one progress line (an epoch, a stage) to the run, for clients that wait on it."""
    run = session.get(TrainingRun, run_id)
    progress = dict(run.params.get("progress") or {"count": 0, "messages": []})
    progress["messages"] = [*progress["messages"], message][-PROGRESS_KEPT:]
    progress["count"] += 1
    progress["updated_at"] = utcnow().isoformat()
    # A new dict, not an in-place change: the JSON column only sees assignments.
    run.params = {**run.params, "progress": progress}


def record_split(session: Session, run_id: int, split: dict[str, Any]) -> None:
    """The split the run trains on (sizes and speakers), known before training starts."""
    run = session.get(TrainingRun, run_id)
    kept = {key: value for key, value in split.items() if key != "description"}
    run.params = {**run.params, "split_made": kept}


def new_progress(session: Session, run_id: int, seen: int) -> tuple[list[str], int]:
    """The progress lines after the first ``seen`` ones, and how many there are now."""
    progress = session.get(TrainingRun, run_id).params.get("progress") or {}
    count, messages = progress.get("count", 0), progress.get("messages", [])
    fresh = min(count - seen, len(messages))
    return (messages[-fresh:] if fresh > 0 else []), count


def find_run(session: Session, run_id: int) -> TrainingRun | None:
    return session.get(TrainingRun, run_id)


def runs_listing(session: Session, limit: int = 20) -> list[dict[str, Any]]:
    """The newest runs first, as `ser-cli runs --json` prints them."""
    runs = session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit))
    return [run_report(session, run) for run in runs]


def run_report(session: Session, run: TrainingRun) -> dict[str, Any]:
    """Everything a person asks of a run: what it was asked to do, where it is, on which split,
    how it scored, and what it registered."""
    params = dict(run.params)
    progress = params.pop("progress", None) or {}
    split = params.pop("split_made", None)
    version = session.get(ModelVersion, run.model_version_id) if run.model_version_id else None
    if version is not None:
        split = {k: v for k, v in version.manifest.get("split", {}).items() if k != "description"}
    metrics = run.metrics or {}
    return {
        "run": run.id,
        "trigger": run.trigger,
        "status": run.status,
        "created_at": run.created_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "params": params,
        "progress": (progress.get("messages") or [None])[-1],
        "split": split,
        "metrics": _scores(metrics.get("new")),
        "active_before": _scores(metrics.get("active_before")),
        "version": version.version if version else None,
        "promoted": run.promoted,
        "replaced": metrics.get("replaced"),
        "error": run.error,
    }


def _scores(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if not metrics:
        return None
    return {
        model: {key: value for key, value in scores.items() if key in RUN_METRICS}
        for model, scores in metrics.items()
    }
