"""What the tasks run: stored clips decoded and prepared as the bundle's members read them,
predicted in one batch, and the outcome written back as prediction rows and item statuses; and
the same decoding for the clips a training run learns from.

A bad clip fails alone, with a stable error code: one odd file must never fail its batch. An
adapt submission's clips are predicted together by service.adaptation instead. The heavy stages
(librosa, TensorFlow) load inside these functions, after the worker's fork.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from ser_worker.config import get_settings
from ser_worker.labels import ENSEMBLE, MODEL_NAMES, SAMPLE_RATE
from ser_worker.service import store
from ser_worker.service.db.models import Submission, SubmissionItem, TrainingRun, utcnow
from ser_worker.service.db.session import session_scope

if TYPE_CHECKING:
    import numpy as np

    from ser_worker.audio import AudioLimits
    from ser_worker.bundle import Bundle, PreparedClip
    from ser_worker.datasets import LabelledClip

log = logging.getLogger(__name__)

# (error code, message) of a clip that could not be used.
Failure = tuple[str, str]


def decode_blobs(
    blobs: Mapping[str, bytes], limits: AudioLimits
) -> tuple[dict[str, np.ndarray], dict[str, Failure]]:
    """Each stored clip decoded (untrimmed: each member trims as it needs), or why not."""
    from ser_worker.audio import load_audio

    return _each(blobs, lambda data: load_audio(data, limits, trim=False))


def prepare_clips(
    bundle: Bundle, decoded: Mapping[str, np.ndarray], limits: AudioLimits
) -> tuple[dict[str, PreparedClip], dict[str, Failure]]:
    """Each decoded clip as the bundle's members read it, or why not (too short once trimmed)."""
    return _each(decoded, lambda y: bundle.prepare(y, SAMPLE_RATE, limits))


def _each(inputs: Mapping[str, Any], step: Callable[[Any], Any]) -> tuple[dict, dict[str, Failure]]:
    from ser_worker.audio import AudioError

    done: dict[str, Any] = {}
    failures: dict[str, Failure] = {}
    for sha256, value in inputs.items():
        try:
            done[sha256] = step(value)
        except AudioError as error:
            failures[sha256] = (error.code, str(error))
        except Exception as error:  # a decoder bug on odd input must fail this clip, not the batch
            failures[sha256] = ("decode_error", f"{type(error).__name__}: {error}")
    return done, failures


def predict_items(
    session: Session, submission: Submission, items: list[SubmissionItem]
) -> dict[str, int]:
    """Predict the pending items of one batch and record the outcome of each; the counts."""
    from ser_worker.service import runtime

    if not items:
        return {"done": 0, "failed": 0, "computed": 0}
    version_id = submission.model_version_id
    store.lock_audio(session, (item.sha256 for item in items), version_id)
    reusable = (
        {}
        if submission.force
        else store.existing_predictions(session, (item.sha256 for item in items), version_id)
    )
    limits = runtime.audio_limits()
    blobs = store.audio_data(session, {item.sha256 for item in items} - reusable.keys())
    decoded, failures = decode_blobs(blobs, limits)
    bundle, prepared = bundle_and_clips(session, submission, decoded, failures, limits)
    if bundle is not None:
        rows = prediction_rows(version_id, prepared, bundle)
        store.save_predictions(session, rows, overwrite=submission.force)
    return {**record_outcomes(items, prepared, failures), "computed": len(prepared)}


def bundle_and_clips(
    session: Session,
    submission: Submission,
    decoded: Mapping[str, np.ndarray],
    failures: dict[str, Failure],
    limits: AudioLimits,
) -> tuple[Bundle | None, dict[str, PreparedClip]]:
    """The submission's bundle and its decoded clips as that bundle reads them; clips that
    cannot be used join `failures`. No bundle when nothing was decoded or it cannot be loaded."""
    from ser_worker.bundle import BundleError
    from ser_worker.service import runtime

    if not decoded:
        return None, {}
    try:
        bundle = runtime.bundle_for(session, submission.model_version_id)
    except BundleError as error:
        # A corrupt or missing bundle does not heal by retrying: fail the clips with the
        # reason instead of failing the task and leaving them pending forever.
        message = f"model version {submission.model_version.version} cannot be used: {error}"
        failures.update(dict.fromkeys(decoded, ("model_error", message)))
        return None, {}
    prepared, unusable = prepare_clips(bundle, decoded, limits)
    failures.update(unusable)
    return bundle, prepared


def prediction_rows(
    version_id: int,
    prepared: Mapping[str, PreparedClip],
    bundle: Bundle,
    *,
    adapt: bool = False,
    **extra: Any,
) -> list[dict[str, Any]]:
    """One row per clip and model (every member and the ensemble), in one batched prediction
    (`adapt`: one adapted call, see Bundle.predict_prepared); `extra` columns go in every row."""
    if not prepared:
        return []
    now = utcnow()
    predictions = bundle.predict_prepared(list(prepared.values()), adapt=adapt)
    return [
        {
            **extra,
            "sha256": sha256,
            "model_version_id": version_id,
            "model": model,
            "emotion": prediction.emotion,
            "confidence": prediction.confidence,
            "probabilities": prediction.probabilities,
            "uncertain": prediction.uncertain,
            "created_at": now,
        }
        for sha256, by_model in zip(prepared, predictions, strict=True)
        for model, prediction in by_model.items()
    ]


def record_outcomes(
    items: list[SubmissionItem],
    prepared: Mapping[str, PreparedClip],
    failures: Mapping[str, Failure],
) -> dict[str, int]:
    """Finish each item: failed with its reason, or done (its predictions are stored)."""
    counts = {"done": 0, "failed": 0}
    for item in items:
        item.processed_at = utcnow()
        if item.sha256 in failures:
            item.status = "failed"
            item.error_code, item.error = failures[item.sha256]
        else:
            item.status = "done"
            if item.sha256 in prepared:
                item.duration_s = prepared[item.sha256].duration_s
        counts[item.status] += 1
    return counts


# --- training ----------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """A run's clips, one per distinct audio content, as the members read them."""

    clips: list[LabelledClip]
    prepared: list[PreparedClip]
    # Each clip's content hash: a new bundle lists those it learns from (store.training_data).
    sha256s: list[str] = field(default_factory=list)

    @property
    def cnn(self) -> list[np.ndarray]:
        return [clip.cnn for clip in self.prepared]

    @property
    def encoder(self) -> list[np.ndarray]:
        return [clip.encoder for clip in self.prepared]


def load_run(session: Session, run_id: int) -> tuple[dict[str, Any], TrainingData]:
    """A run's parameters and its labelled clips, decoded; a CLI run's items are marked done
    or failed with it."""
    run = session.get(TrainingRun, run_id)
    return dict(run.params), load_labelled_clips(session, run)


def load_labelled_clips(session: Session, run: TrainingRun) -> TrainingData:
    from ser_worker.datasets import LabelledClip
    from ser_worker.service import runtime

    items = store.labelled_items(session, run)
    first_item: dict[str, SubmissionItem] = {}
    for item in items:
        first_item.setdefault(item.sha256, item)
    limits = runtime.audio_limits()
    blobs = store.audio_data(session, first_item)
    ordered = {sha: blobs[sha] for sha in sorted(blobs, key=lambda sha: first_item[sha].id)}
    decoded, failures = decode_blobs(ordered, limits)
    prepared, unusable = _each(decoded, lambda y: training_clip(y, limits))
    failures.update(unusable)
    if run.submission_id is not None:
        pending = [item for item in items if item.status == "pending"]
        record_outcomes(pending, {}, failures)
    clips = [
        LabelledClip(Path(item.filename), item.true_emotion, item.speaker, "store")
        for item in (first_item[sha] for sha in prepared)
    ]
    return TrainingData(clips=clips, prepared=list(prepared.values()), sha256s=list(prepared))


def training_clip(y: np.ndarray, limits: AudioLimits) -> PreparedClip:
    """A decoded clip as a new bundle's members will read it: no bundle exists yet to ask, so
    the preprocessing every new bundle records (CURRENT_PREPROCESSING)."""
    from ser_worker.bundle.manifest import CURRENT_PREPROCESSING
    from ser_worker.bundle.preprocess import prepare_clip

    return prepare_clip(y, SAMPLE_RATE, CURRENT_PREPROCESSING, limits)


def train_run(run_id: int, params: Mapping[str, Any], data: TrainingData) -> TrainedRun:
    """Split, train and evaluate on the test side: the new bundle, not yet registered."""
    from ser_worker.datasets import random_split, speaker_split
    from ser_worker.training.config import TrainConfig
    from ser_worker.training.experiment import train_and_evaluate

    settings, seed = get_settings(), params.get("seed", 0)
    splitter = speaker_split if params.get("split", "speaker") == "speaker" else random_split
    split = splitter(data.clips, seed=seed)
    with session_scope() as session:
        store.record_split(session, run_id, split.to_dict())
    config = TrainConfig(
        models=tuple(params.get("models", MODEL_NAMES)),
        epochs=params.get("epochs", settings.train_epochs),
        seed=seed,
        precision=settings.train_precision,
    )
    learnt = sorted({data.sha256s[i] for i in (*split.train, *split.val)})
    with tempfile.TemporaryDirectory(prefix="ser-train-") as cache_dir:
        bundle, metrics = train_and_evaluate(
            data.cnn,
            data.clips,
            split,
            config,
            cache_dir=Path(cache_dir),
            progress=lambda message: report_progress(run_id, message),
            training_data={"source": "store", "training_run": run_id, "sha256": learnt},
            untrimmed=data.encoder,
        )
    test = [data.prepared[i] for i in split.test]
    return TrainedRun(bundle, metrics, test, [data.clips[i].emotion for i in split.test])


def report_progress(run_id: int, message: str) -> None:
    """Log a training step and store it on the run, where `ser-cli train --wait` and
    `ser-cli runs` read it (the worker's log is not where the user is)."""
    log.info("run %s: %s", run_id, message)
    with session_scope() as session:
        store.record_progress(session, run_id, message)


@dataclass
class TrainedRun:
    bundle: Bundle
    metrics: dict[str, Any]
    test_clips: list[PreparedClip]
    test_labels: list[str]


def register_trained(
    session: Session, run: TrainingRun, trained: TrainedRun, policy: str
) -> dict[str, Any]:
    """Register the new version, promote it if `policy` says so, and close the run."""
    from ser_worker.bundle import bundle_bytes

    baseline = active_scores(session, trained)
    promote = should_promote(policy, trained.metrics, baseline)
    bundle = trained.bundle
    version = store.register_version(
        session, bundle_bytes(bundle), bundle.manifest, source="trained", activate=False
    )
    replaced = store.active_version(session)
    if promote:
        store.promote_version(session, version)
    metrics = {"new": trained.metrics, "active_before": baseline}
    if promote and replaced is not None:
        metrics["replaced"] = replaced.version  # what `ser-cli models --activate` rolls back to
    store.finish_run(session, run, version, metrics=metrics, promoted=promote)
    return {"run": run.id, "status": run.status, "version": version.version, "promoted": promote}


def active_scores(session: Session, trained: TrainedRun) -> dict[str, Any] | None:
    """The active bundle's scores on the new bundle's test clips, when the comparison is fair:
    the new bundle has every CNN (a one-CNN ensemble is not the one it would replace)."""
    from ser_worker.service import runtime
    from ser_worker.training.experiment import evaluate_bundle

    active = store.active_version(session)
    if active is None or set(trained.bundle.models) != set(MODEL_NAMES):
        return None
    return evaluate_bundle(
        runtime.bundle_for(session, active.id),
        [clip.cnn for clip in trained.test_clips],
        trained.test_labels,
        untrimmed=[clip.encoder for clip in trained.test_clips],
    )


def should_promote(policy: str, metrics: dict[str, Any], baseline: dict[str, Any] | None) -> bool:
    if policy == "always":
        return True
    if policy == "never" or ENSEMBLE not in metrics:
        return False
    return baseline is None or metrics[ENSEMBLE]["macro_f1"] > baseline[ENSEMBLE]["macro_f1"]
