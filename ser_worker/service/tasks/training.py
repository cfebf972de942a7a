"""Training: fit both models on labelled clips from the store, evaluate on the held-out split,
register the bundle as a new model version and promote it only when it beats the active one on
the same test clips. A run that dies half-way registers nothing: the version row, the run's
result and the promotion are written in one transaction at the very end."""

import logging
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import undefer

from ser_worker.config import get_settings
from ser_worker.service import store
from ser_worker.service.celery_app import app
from ser_worker.service.db.models import AudioBlob, SubmissionItem, TrainingRun, utcnow
from ser_worker.service.db.session import session_scope
from ser_worker.service.tasks import RETRY_OPTIONS

log = logging.getLogger(__name__)
FINISHED = ("succeeded", "failed", "skipped")


@app.task(name="ser.train", **RETRY_OPTIONS)
def train(run_id: int) -> dict[str, Any]:
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        if run is None or run.status in FINISHED:
            return {"run": run_id, "status": run.status if run else "missing"}
        # A redelivered run (its worker died) starts again from scratch: nothing was registered.
        run.status = "running"
    try:
        return _execute(run_id)
    except Exception as error:
        with session_scope() as session:
            run = session.get(TrainingRun, run_id)
            if run.status != "succeeded":  # a duplicate delivery's failure undoes no success
                run.status, run.error, run.finished_at = (
                    "failed",
                    f"{type(error).__name__}: {error}",
                    utcnow(),
                )
        raise


@app.task(name="ser.retrain", **RETRY_OPTIONS)
def retrain() -> dict[str, Any]:
    """Scheduled: retrain on every labelled clip in the store, unless nothing new arrived."""
    settings = get_settings()
    with session_scope() as session:
        cutoff = session.scalar(
            select(func.max(SubmissionItem.id)).where(
                SubmissionItem.true_emotion.is_not(None), SubmissionItem.sha256.is_not(None)
            )
        )
        last_cutoff = session.scalar(
            select(func.max(TrainingRun.data_cutoff)).where(TrainingRun.status == "succeeded")
        )
        nothing_new = cutoff is None or (last_cutoff is not None and cutoff <= last_cutoff)
        run = TrainingRun(
            trigger="schedule",
            status="skipped" if nothing_new else "queued",
            params={"epochs": settings.train_epochs, "split": "speaker", "promote": "auto"},
            data_cutoff=cutoff,
            finished_at=utcnow() if nothing_new else None,
        )
        session.add(run)
        session.flush()
        run_id = run.id
    if nothing_new:
        log.info("retraining skipped: no labelled clip arrived since the last run")
        return {"run": run_id, "status": "skipped"}
    return train(run_id)


def _load_labelled_clips(session, run: TrainingRun):
    """(trimmed waveforms, the same untrimmed, clips) for the run's data, one entry per distinct
    audio content."""
    from ser_worker.audio import AudioError, load_audio, trim_silence
    from ser_worker.datasets import LabelledClip
    from ser_worker.service import runtime

    query = select(SubmissionItem).where(
        SubmissionItem.true_emotion.is_not(None), SubmissionItem.sha256.is_not(None)
    )
    if run.submission_id is not None:
        query = query.where(SubmissionItem.submission_id == run.submission_id)
    else:
        query = query.where(SubmissionItem.id <= run.data_cutoff)
    items = session.scalars(query.order_by(SubmissionItem.id)).all()
    first_item: dict[str, SubmissionItem] = {}
    for item in items:
        first_item.setdefault(item.sha256, item)
    blobs = session.scalars(
        select(AudioBlob).where(AudioBlob.sha256.in_(first_item)).options(undefer(AudioBlob.data))
    ).all()
    limits = runtime.audio_limits()
    waveforms, untrimmed, clips, failures = [], [], [], {}
    for blob in sorted(blobs, key=lambda b: first_item[b.sha256].id):
        item = first_item[blob.sha256]
        try:
            decoded = load_audio(blob.data, limits, trim=False)
            waveforms.append(trim_silence(decoded, limits))
            untrimmed.append(decoded)
        except AudioError as error:
            failures[blob.sha256] = (error.code, str(error))
            continue
        clips.append(LabelledClip(Path(item.filename), item.true_emotion, item.speaker, "store"))
    for item in items:
        if run.submission_id is not None and item.status == "pending":
            item.status = "failed" if item.sha256 in failures else "done"
            item.error_code, item.error = failures.get(item.sha256, (None, None))
            item.processed_at = utcnow()
    return waveforms, untrimmed, clips


def _execute(run_id: int) -> dict[str, Any]:
    from ser_worker.bundle import bundle_bytes
    from ser_worker.datasets import random_split, speaker_split
    from ser_worker.service import runtime
    from ser_worker.training.experiment import evaluate_bundle, train_and_evaluate
    from ser_worker.training.fit import TrainConfig

    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        params = dict(run.params)
        waveforms, untrimmed, clips = _load_labelled_clips(session, run)
        if run.data_cutoff is None:
            run.data_cutoff = session.scalar(
                select(func.max(SubmissionItem.id)).where(
                    SubmissionItem.submission_id == run.submission_id
                )
            )
    if params.get("split", "speaker") == "speaker":
        split = speaker_split(clips, seed=params.get("seed", 0))
    else:
        split = random_split(clips, seed=params.get("seed", 0))
    config = TrainConfig(
        models=tuple(params.get("models", ("cnn1d", "cnn2d"))),
        epochs=params.get("epochs", get_settings().train_epochs),
        seed=params.get("seed", 0),
        precision=get_settings().train_precision,
    )
    with tempfile.TemporaryDirectory(prefix="ser-train-") as cache_dir:
        bundle, metrics = train_and_evaluate(
            waveforms,
            clips,
            split,
            config,
            cache_dir=Path(cache_dir),
            progress=lambda message: log.info("run %s: %s", run_id, message),
            training_data={"source": "store", "training_run": run_id},
            untrimmed=untrimmed,
        )
    test_labels = [clips[i].emotion for i in split.test]

    with session_scope() as session:
        # Locked until the registration commits: when the broker delivered this run twice (its
        # visibility timeout ran out while it trained), the second to finish registers nothing.
        run = session.get(TrainingRun, run_id, with_for_update=True)
        if run.status == "succeeded":
            log.warning("run %s: another delivery of this run already registered it", run_id)
            return {"run": run_id, "status": run.status, "duplicate": True}
        active = store.active_version(session)
        baseline = None
        if active is not None and len(bundle.models) == 2:
            baseline = evaluate_bundle(
                runtime.bundle_for(session, active.id),
                [waveforms[i] for i in split.test],
                test_labels,
                untrimmed=[untrimmed[i] for i in split.test],
            )
        promote = _should_promote(params.get("promote", "auto"), metrics, baseline)
        version = store.register_version(
            session, bundle_bytes(bundle), bundle.manifest, source="trained", activate=False
        )
        if promote:
            store.promote_version(session, version)
        run.status, run.finished_at = "succeeded", utcnow()
        run.metrics = {"new": metrics, "active_before": baseline}
        run.model_version_id, run.promoted = version.id, promote
        return {
            "run": run_id,
            "status": run.status,
            "version": version.version,
            "promoted": promote,
        }


def _should_promote(policy: str, metrics: dict, baseline: dict | None) -> bool:
    if policy == "always":
        return True
    if policy == "never" or "ensemble" not in metrics:
        return False
    return baseline is None or metrics["ensemble"]["macro_f1"] > baseline["ensemble"]["macro_f1"]
