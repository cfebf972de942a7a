"""Scores of stored predictions against the labels read from file names: the metrics an
evaluation submission stores once, and the short summary `ser-cli submit --wait` prints."""

from collections import Counter
from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ser_worker.evaluation.metrics import evaluate
from ser_worker.labels import ENSEMBLE
from ser_worker.service.db.models import Evaluation, ModelVersion, Submission, utcnow
from ser_worker.service.store.adapted import submission_adapted
from ser_worker.service.store.predictions import result_rows, uncertain_counts
from ser_worker.service.store.sql import insert
from ser_worker.service.store.submissions import status_counts

# What the submit summary shows of each model's scores (the evaluation keeps them all).
SUMMARY_METRICS = ("accuracy", "macro_f1", "n")


def labelled_outcomes(rows: Iterable[dict[str, Any]]) -> dict[str, tuple[list[str], list[str]]]:
    """Per model, the (true, predicted) emotion lists of done clips that carry a label."""
    outcomes: dict[str, tuple[list[str], list[str]]] = {}
    for row in rows:
        if row["status"] == "done" and row["true_emotion"] and row["emotion"]:
            true, predicted = outcomes.setdefault(row["model"], ([], []))
            true.append(row["true_emotion"])
            predicted.append(row["emotion"])
    return outcomes


def save_evaluation(session: Session, submission: Submission) -> Evaluation | None:
    """Store the metrics of a finished evaluation submission once; None while clips are pending."""
    if status_counts(session, submission.id).get("pending"):
        return None
    rows = result_rows(session, submission.id)
    outcomes = labelled_outcomes(rows)
    n_clips = sum(1 for row in rows if row["model"] == ENSEMBLE)
    labelled = len(outcomes.get(ENSEMBLE, ([], []))[0])
    # Two deliveries of the last batch may both get here: the unique key keeps the first.
    statement = (
        insert(session, Evaluation)
        .values(
            submission_id=submission.id,
            model_version_id=submission.model_version_id,
            n_clips=n_clips,
            skipped=n_clips - labelled,
            metrics={model: evaluate(*pair) for model, pair in outcomes.items()},
            created_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["submission_id"])
    )
    session.execute(statement)
    return session.scalar(select(Evaluation).where(Evaluation.submission_id == submission.id))


def evaluation_report(session: Session, submission_id: str) -> dict[str, Any] | None:
    """The stored evaluation as `ser-cli evaluate --json` prints it; None until it is stored."""
    evaluation = session.scalar(select(Evaluation).where(Evaluation.submission_id == submission_id))
    if evaluation is None:
        return None
    version = session.get(ModelVersion, evaluation.model_version_id)
    ensemble = result_rows(session, submission_id, models=(ENSEMBLE,))
    return {
        "submission": submission_id,
        "model_version": version.version,
        "n_clips": evaluation.n_clips,
        "skipped": evaluation.skipped,
        "seen_in_training": sum(1 for row in ensemble if row["seen_in_training"]),
        "metrics": evaluation.metrics,
    }


def evaluations_listing(session: Session, limit: int = 20) -> list[dict[str, Any]]:
    """The newest stored evaluations first, each with its ensemble's headline scores."""
    query = (
        select(Evaluation, ModelVersion.version)
        .join(ModelVersion, ModelVersion.id == Evaluation.model_version_id)
        .order_by(Evaluation.created_at.desc(), Evaluation.id.desc())
        .limit(limit)
    )
    listing = []
    for evaluation, version in session.execute(query):
        ensemble = evaluation.metrics.get(ENSEMBLE, {})
        listing.append(
            {
                "submission": evaluation.submission_id,
                "model_version": version,
                "created_at": evaluation.created_at.isoformat(),
                "n_clips": evaluation.n_clips,
                "skipped": evaluation.skipped,
                **{key: ensemble.get(key) for key in SUMMARY_METRICS},
            }
        )
    return listing


def submission_summary(session: Session, submission_id: str) -> dict[str, Any]:
    """Counts, the ensemble's emotions, uncertain predictions and failures, and scores where
    clips carry labels."""
    rows = result_rows(session, submission_id)
    ensemble = [row for row in rows if row["model"] == ENSEMBLE]
    summary: dict[str, Any] = {
        "submission": submission_id,
        "status": dict(status_counts(session, submission_id)),
        # Predicted together (--adapt): every answer depends on the submission's other clips.
        "adapted": submission_adapted(session, submission_id),
        "emotions": dict(Counter(row["emotion"] for row in ensemble if row["emotion"])),
        "failed": [
            {"clip": row["clip"], "error_code": row["error_code"], "error": row["error"]}
            for row in ensemble
            if row["status"] == "failed"
        ],
        # Scores on clips the model learnt from are no test: the CLI says how many there are.
        "clips": len(ensemble),
        "seen_in_training": sum(1 for row in ensemble if row["seen_in_training"]),
        # The ensemble's predictions whose best class is below the version's threshold.
        **uncertain_counts(session, submission_id),
    }
    outcomes = labelled_outcomes(rows)
    if outcomes:
        summary["metrics"] = {
            model: {k: v for k, v in evaluate(*pair).items() if k in SUMMARY_METRICS}
            for model, pair in outcomes.items()
        }
    return summary
