"""Inference: decode a batch of stored clips, run the models once per batch, store predictions."""

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, undefer

from ser_worker.service import store
from ser_worker.service.celery_app import app
from ser_worker.service.db.models import AudioBlob, Submission, SubmissionItem, utcnow
from ser_worker.service.db.session import session_scope
from ser_worker.service.tasks import RETRY_OPTIONS


@app.task(name="ser.infer", **RETRY_OPTIONS)
def infer(item_ids: list[int]) -> dict[str, int]:
    with session_scope() as session:
        items = session.scalars(
            select(SubmissionItem)
            .where(SubmissionItem.id.in_(item_ids))
            .options(selectinload(SubmissionItem.submission))
        ).all()
        if not items:
            return {"done": 0, "failed": 0, "computed": 0}
        submission = items[0].submission
        # Items already processed (a redelivered or resumed batch) are skipped, but the
        # evaluation step below still runs: the first delivery may have died just before it.
        pending = [item for item in items if item.status == "pending"]
        outcome = _predict_items(session, submission, pending)
    if submission.kind == "evaluate":
        with session_scope() as session:
            store.save_evaluation(session, session.get(Submission, submission.id))
    return outcome


def _predict_items(
    session: Session, submission: Submission, items: list[SubmissionItem]
) -> dict[str, int]:
    from ser_worker.audio import SAMPLE_RATE, AudioError, load_audio, trim_silence
    from ser_worker.bundle import BundleError
    from ser_worker.bundle.predict import predict
    from ser_worker.service import runtime

    counts = {"done": 0, "failed": 0, "computed": 0}
    if not items:
        return counts
    version_id = submission.model_version_id
    store.lock_audio(session, (item.sha256 for item in items), version_id)
    reusable = (
        {}
        if submission.force
        else store.existing_predictions(session, (item.sha256 for item in items), version_id)
    )
    to_compute = {item.sha256 for item in items} - reusable.keys()
    blobs = session.scalars(
        select(AudioBlob).where(AudioBlob.sha256.in_(to_compute)).options(undefer(AudioBlob.data))
    ).all()

    waveforms: dict[str, Any] = {}
    # The speech encoder reads the clip as decoded; the CNNs' features, trimmed of silence.
    untrimmed: dict[str, Any] = {}
    errors: dict[str, tuple[str, str]] = {}
    limits = runtime.audio_limits()
    for blob in blobs:
        try:
            untrimmed[blob.sha256] = load_audio(blob.data, limits, trim=False)
            waveforms[blob.sha256] = trim_silence(untrimmed[blob.sha256], limits)
        except AudioError as error:
            errors[blob.sha256] = (error.code, str(error))
        except Exception as error:  # a decoder bug on odd input must fail this clip, not the batch
            errors[blob.sha256] = ("decode_error", f"{type(error).__name__}: {error}")

    if waveforms:
        try:
            bundle = runtime.bundle_for(session, version_id)
        except BundleError as error:
            # A corrupt or missing bundle does not heal by retrying: fail the clips with the
            # reason instead of failing the task and leaving them pending forever.
            message = f"model version {submission.model_version.version} cannot be used: {error}"
            errors.update(dict.fromkeys(waveforms, ("model_error", message)))
            waveforms = {}
    rows: list[dict[str, Any]] = []
    if waveforms:
        now = utcnow()
        for sha256, by_model in zip(
            waveforms,
            predict(
                bundle,
                list(waveforms.values()),
                untrimmed=[untrimmed[sha256] for sha256 in waveforms],
            ),
            strict=True,
        ):
            for model, prediction in by_model.items():
                rows.append(
                    {
                        "sha256": sha256,
                        "model_version_id": version_id,
                        "model": model,
                        "emotion": prediction.emotion,
                        "confidence": prediction.confidence,
                        "probabilities": prediction.probabilities,
                        "created_at": now,
                    }
                )
    store.save_predictions(session, rows, overwrite=submission.force)

    counts["computed"] = len(waveforms)
    for item in items:
        item.processed_at = utcnow()
        if item.sha256 in errors:
            item.status = "failed"
            item.error_code, item.error = errors[item.sha256]
        else:
            item.status = "done"
            if item.sha256 in waveforms:
                item.duration_s = len(waveforms[item.sha256]) / SAMPLE_RATE
        counts[item.status] += 1
    return counts
