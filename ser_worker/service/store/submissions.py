"""Submissions and their items: what the CLI stores, and what it polls while workers process it."""

import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ser_worker.service.db.models import Submission, SubmissionItem, utcnow
from ser_worker.service.store.audio import store_audio


@dataclass(frozen=True)
class ClipUpload:
    """One file as the CLI read it: its bytes, or why they could not be read, or the hash of its
    bytes stored already (the CLI stores a large folder's audio a batch at a time)."""

    filename: str
    data: bytes | None
    error_code: str | None = None
    error: str | None = None
    true_emotion: str | None = None
    speaker: str | None = None
    sha256: str | None = None


def create_submission(
    session: Session,
    uploads: Sequence[ClipUpload],
    *,
    kind: str,
    label_scheme: str,
    model_version_id: int | None,
    force: bool = False,
    adapt: bool = False,
) -> Submission:
    submission = Submission(
        id=uuid.uuid4().hex,
        kind=kind,
        label_scheme=label_scheme,
        model_version_id=model_version_id,
        force=force,
        adapt=adapt,
    )
    session.add(submission)
    digests = iter(store_audio(session, [u.data for u in uploads if u.data is not None]))
    for upload in uploads:
        submission.items.append(_item(upload, digests))
    session.flush()
    return submission


def _item(upload: ClipUpload, digests) -> SubmissionItem:
    common = {
        "filename": upload.filename,
        "true_emotion": upload.true_emotion,
        "speaker": upload.speaker,
    }
    if upload.data is not None:
        return SubmissionItem(sha256=next(digests), **common)
    if upload.sha256 is not None:
        return SubmissionItem(sha256=upload.sha256, **common)
    # A file the CLI could not read is finished before any worker sees it.
    return SubmissionItem(
        status="failed",
        error_code=upload.error_code,
        error=upload.error,
        processed_at=utcnow(),
        **common,
    )


def pending_item_batches(session: Session, submission_id: str, batch_size: int) -> list[list[int]]:
    """The pending items' ids in batches of `batch_size`, one task each; an adapt submission's
    in one batch whatever its size: its clips are standardised together, by one worker."""
    ids = session.scalars(
        select(SubmissionItem.id)
        .where(SubmissionItem.submission_id == submission_id, SubmissionItem.status == "pending")
        .order_by(SubmissionItem.id)
    ).all()
    if ids and session.scalar(select(Submission.adapt).where(Submission.id == submission_id)):
        return [list(ids)]
    return [list(ids[i : i + batch_size]) for i in range(0, len(ids), batch_size)]


def status_counts(session: Session, submission_id: str) -> Counter[str]:
    rows = session.execute(
        select(SubmissionItem.status, func.count())
        .where(SubmissionItem.submission_id == submission_id)
        .group_by(SubmissionItem.status)
    ).all()
    return Counter({status: count for status, count in rows})


def mark_enqueued(session: Session, submission_id: str, enqueued: bool = True) -> None:
    submission = session.get(Submission, submission_id)
    submission.enqueued_at = utcnow() if enqueued else None


def lock_for_enqueue(session: Session, submission_id: str) -> bool:
    """Hold the submission's row until the transaction ends, while its clips are enqueued, so
    another command looking for stranded submissions passes over it (PostgreSQL; SQLite
    serialises writers anyway). True when it was enqueued already."""
    submission = session.scalar(
        select(Submission).where(Submission.id == submission_id).with_for_update()
    )
    return submission is not None and submission.enqueued_at is not None


def never_enqueued(session: Session, submission_id: str | None = None) -> list[str]:
    """Submissions (this one, or all) stored with pending clips but never wholly enqueued: the
    CLI that stored them stopped before its last enqueue."""
    pending = select(SubmissionItem.id).where(
        SubmissionItem.submission_id == Submission.id, SubmissionItem.status == "pending"
    )
    query = select(Submission.id).where(
        Submission.enqueued_at.is_(None), Submission.kind != "train", pending.exists()
    )
    if submission_id is not None:
        query = query.where(Submission.id == submission_id)
    # A submission whose command is enqueueing it right now holds its row (lock_for_enqueue):
    # it is not stranded, and another command must not queue its clips a second time.
    query = query.with_for_update(of=Submission, skip_locked=True)
    return list(session.scalars(query.order_by(Submission.created_at)))


def latest_submission_id(session: Session) -> str | None:
    return session.scalar(select(Submission.id).order_by(Submission.created_at.desc()).limit(1))


def submission_kind(session: Session, submission_id: str) -> str | None:
    """ "predict", "evaluate" or "train"; None when there is no such submission."""
    submission = session.get(Submission, submission_id)
    return submission.kind if submission is not None else None


class SubmissionNotFound(LookupError):
    """No submission, or more than one, has an id starting with what the user typed."""


# How many candidates an error names, and how many characters of an id people are shown.
_CANDIDATES = 5
SHORT_ID = 8


def resolve_submission_id(session: Session, prefix: str) -> str:
    """The one submission whose id starts with ``prefix`` (any case; a trailing "..." as in the
    help's examples is ignored); `SubmissionNotFound`, naming candidates, for none or several."""
    wanted = prefix.strip().rstrip(".…").lower()
    if session.get(Submission, wanted) is not None:
        return wanted
    # Ids are uuid4 hex: anything else cannot match, and LIKE then never sees a wildcard.
    hexadecimal = bool(wanted) and all(c in "0123456789abcdef" for c in wanted)
    matches = (
        session.execute(
            select(Submission.id, Submission.kind, Submission.created_at)
            .where(Submission.id.startswith(wanted))
            .order_by(Submission.created_at.desc())
            .limit(_CANDIDATES + 1)
        ).all()
        if hexadecimal
        else []
    )
    if len(matches) == 1:
        return matches[0].id
    if matches:
        more = " (and more)" if len(matches) > _CANDIDATES else ""
        raise SubmissionNotFound(
            f"{prefix!r} matches several submissions{more}: "
            f"{_describe(matches[:_CANDIDATES])}; type more of the id"
        )
    recent = session.execute(
        select(Submission.id, Submission.kind, Submission.created_at)
        .order_by(Submission.created_at.desc())
        .limit(_CANDIDATES)
    ).all()
    hint = f"; the latest are {_describe(recent)}" if recent else "; nothing has been submitted"
    raise SubmissionNotFound(f"no submission id starts with {prefix!r}{hint}")


def _describe(rows) -> str:
    return ", ".join(
        f"{row.id[:SHORT_ID]} ({row.kind}, {row.created_at:%Y-%m-%d %H:%M})" for row in rows
    )


def submissions_listing(
    session: Session,
    *,
    ids: Sequence[str] = (),
    kinds: Sequence[str] = (),
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Past submissions, newest first: id, when, kind, whether adapted (--adapt), model version
    and clips per status."""
    query = select(Submission).order_by(Submission.created_at.desc(), Submission.id)
    if ids:
        query = query.where(Submission.id.in_(ids))
    if kinds:
        query = query.where(Submission.kind.in_(kinds))
    submissions = session.scalars(query.limit(limit)).all()
    counts: dict[str, dict[str, int]] = {submission.id: {} for submission in submissions}
    for submission_id, status, count in session.execute(
        select(SubmissionItem.submission_id, SubmissionItem.status, func.count())
        .where(SubmissionItem.submission_id.in_(list(counts)))
        .group_by(SubmissionItem.submission_id, SubmissionItem.status)
    ):
        counts[submission_id][status] = count
    return [
        {
            "submission": submission.id,
            "created_at": submission.created_at.isoformat(),
            "kind": submission.kind,
            "adapted": submission.adapt,
            "model_version": submission.model_version.version if submission.model_version else None,
            "counts": counts[submission.id],
            "clips": sum(counts[submission.id].values()),
        }
        for submission in submissions
    ]
