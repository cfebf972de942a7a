"""`submit`, `resume` and `status`: audio in, a submission id out, and following it."""

from pathlib import Path
from typing import Any

import click
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy.exc import OperationalError as DatabaseError

from cli import adapt as adaptation
from cli import render, safe
from cli.collect import Collected, NothingToSubmit, collect, store_clips
from cli.render import console
from cli.wait import ServiceError, check_broker, check_services, progress, wait_for_items
from ser_worker.bundle import BundleError
from ser_worker.config import Settings
from ser_worker.datasets import SCHEMES
from ser_worker.service import store
from ser_worker.service.db.session import embedded_store_lock, session_scope

labels_option = click.option(
    "--labels",
    # Labels are read per file name here; a path,label CSV is a dataset-level layout
    # (datasets.load_dataset) that per-file labelling cannot read.
    type=click.Choice([scheme for scheme in SCHEMES if scheme != "csv"]),
    default="auto",
    show_default=True,
    help="How to read the true emotion from file names (for accuracy in the summary).",
)
wait_option = click.option(
    "--wait", is_flag=True, help="Follow the submission until every clip is processed."
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON on stdout."
)


def collect_or_fail(paths: list[Path], scheme: str, settings: Settings) -> Collected:
    """Walk the paths (nothing read yet): every problem with the input is known before anything
    is stored."""
    try:
        return collect(paths, scheme=scheme, max_bytes=settings.max_file_bytes)
    except NothingToSubmit as error:
        raise click.ClickException(safe.plain(error)) from None


def report_skipped(collected: Collected) -> None:
    for path, reason in collected.skipped:
        console.print(f"[yellow]skipped[/] {safe.name(path)}: {safe.name(reason)}")
    if collected.hidden:
        console.print(
            f"skipped {collected.hidden} hidden files and folders (names starting with '.')"
        )


def submit_clips(
    settings: Settings,
    paths: tuple[Path, ...],
    *,
    kind: str,
    scheme: str,
    version_name: str | None = None,
    force: bool = False,
    adapt: bool = False,
) -> tuple[str, Collected]:
    """Store the clips under the chosen version and enqueue them: (submission id, what was read).

    Walk, check the services, stream the audio in, then one transaction makes the submission:
    readers see all of it or none, and a stop before it leaves only unreferenced audio.
    `adapt`: per-submission adaptation, refused before anything is stored when it cannot work.
    """
    collected = collect_or_fail(list(paths), scheme, settings)
    if adapt:
        adaptation.check_enough_to_adapt(len(collected.clips))
    check_services(settings)
    # Two first submits on a fresh embedded store take turns to activate the shipped model
    # (SQLite has no row locks to make the loser wait); a no-op on PostgreSQL.
    with embedded_store_lock(settings.database), session_scope() as session:
        version = _version(session, version_name)
        version_id = version.id
        if adapt:
            adaptation.check_version_adapts(version.version, store.can_adapt(version.manifest))
    report_skipped(collected)
    requeue_stranded(settings)
    try:
        uploads = store_clips(collected.clips, max_bytes=settings.max_file_bytes)
    except DatabaseError as error:
        raise ServiceError(
            f"database unavailable while storing the audio ({type(error.orig).__name__}): "
            "nothing was submitted; submit again once it is back"
        ) from None
    with session_scope() as session:
        submission = store.create_submission(
            session,
            uploads,
            kind=kind,
            label_scheme=scheme,
            model_version_id=version_id,
            force=force,
            adapt=adapt,
        )
        batches = store.pending_item_batches(session, submission.id, settings.batch_size)
    # On stderr before any waiting, so that an interrupted command still says what to follow.
    console.print(f"submission {submission.id}: {len(uploads)} clips", highlight=False)
    enqueue(settings, submission.id, batches)
    return submission.id, collected


def _version(session, version_name: str | None):
    if version_name:
        version = store.find_version(session, version_name)
        if version is None:
            raise click.ClickException(
                f"no model version {safe.plain(version_name)!r}; see `ser-cli models`"
            )
        return version
    try:
        return store.ensure_active_version(session)
    except (store.NoModelError, BundleError) as error:
        raise click.ClickException(safe.plain(error)) from None


def enqueue(
    settings: Settings, submission_id: str, batches: list[list[int]], *, stranded: bool = False
) -> None:
    """Hand the batches to the queue and record that it is done. A command stopped before that
    leaves the submission marked never enqueued, and `requeue_stranded` finds it. Distributed,
    the submission's row is held meanwhile, so a concurrent command does not take it for
    stranded; a `stranded` one that another command enqueued meanwhile is left alone."""
    if settings.embedded:
        _enqueue(settings, submission_id, batches)
        return
    with session_scope() as session:
        if store.lock_for_enqueue(session, submission_id) and stranded:
            return
        _enqueue(settings, submission_id, batches)
        store.mark_enqueued(session, submission_id, True)


def _enqueue(settings: Settings, submission_id: str, batches: list[list[int]]) -> None:
    from ser_worker.service.tasks.inference import infer

    if settings.embedded:
        # The queue is this process: once it starts, nobody else should start the same work,
        # unless it is interrupted (below).
        _mark_enqueued(submission_id, True)
    # In embedded mode the tasks run right here, so the bar shows the processing itself.
    try:
        with progress(settings.embedded) as bar:
            # Counted in clips; the first batch also loads the model, which takes a while.
            task = bar.add_task(
                "loading the model…" if settings.embedded else "enqueueing",
                total=sum(map(len, batches)),
            )
            for batch in batches:
                try:
                    infer.apply_async(args=[batch])
                except BrokerError as error:
                    raise ServiceError(
                        f"broker unreachable while enqueueing: "
                        f"{safe.scrub(error, settings.broker_url)}. The submission "
                        f"{submission_id} is stored; the next `ser-cli status`, `submit` or "
                        "`resume` queues its clips once the broker is back."
                    ) from None
                bar.update(
                    task,
                    advance=len(batch),
                    description="processing" if settings.embedded else "enqueueing",
                )
    except KeyboardInterrupt:
        if settings.embedded:
            _mark_enqueued(submission_id, False)
        raise


def _mark_enqueued(submission_id: str, enqueued: bool) -> None:
    with session_scope() as session:
        store.mark_enqueued(session, submission_id, enqueued)


def requeue_stranded(settings: Settings, submission_id: str | None = None) -> None:
    """Queue the pending clips of submissions (this one, or any) that a stopped command stored
    but never finished enqueueing. A clip queued twice is harmless: a task skips clips that
    are no longer pending, and a prediction is stored once per clip and model version."""
    with session_scope() as session:
        stranded = store.never_enqueued(session, submission_id)
    if stranded and not settings.embedded:
        check_broker(settings)
    for stranded_id in stranded:
        with session_scope() as session:
            batches = store.pending_item_batches(session, stranded_id, settings.batch_size)
        console.print(
            f"[yellow]submission {stranded_id}: {sum(map(len, batches))} clips were stored but "
            "never queued (an earlier command stopped); queueing them now[/]"
        )
        enqueue(settings, stranded_id, batches, stranded=True)


def resolve_submission(submission_id: str | None) -> str:
    """The submission a unique id prefix names, or the latest one."""
    with session_scope() as session:
        if submission_id is None:
            submission_id = store.latest_submission_id(session)
            if submission_id is None:
                raise click.ClickException("nothing has been submitted yet")
            return submission_id
        try:
            return store.resolve_submission_id(session, submission_id)
        except store.SubmissionNotFound as error:
            raise click.ClickException(safe.plain(error)) from None


def wait_and_report(settings: Settings, submission_id: str, as_json: bool, **extra: Any) -> None:
    requeue_stranded(settings, submission_id)
    wait_for_items(submission_id)
    with session_scope() as session:
        summary = {**store.submission_summary(session, submission_id), **extra}
    if as_json:
        render.echo_json(summary, indent=2)
    else:
        click.echo(submission_id)
        render.print_summary(summary)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@wait_option
@labels_option
@click.option("--force", is_flag=True, help="Recompute predictions that already exist.")
@click.option(
    "--timeline",
    is_flag=True,
    help="Each file is a recording: cut into speech segments, each one predicted "
    "(see `ser-cli timeline`).",
)
@adaptation.adapt_option
@json_option
@click.pass_obj
def submit(
    settings: Settings,
    paths: tuple[Path, ...],
    wait: bool,
    labels: str,
    force: bool,
    timeline: bool,
    adapt: bool,
    as_json: bool,
) -> None:
    """Submit audio files or folders (searched recursively) for emotion recognition.

    Prints the submission id. Each clip is predicted by every model of the version (the CNNs,
    the speech encoder's head) and their ensemble; a clip already predicted by the active model
    version is not recomputed unless --force (an --adapt submission's clips are always
    predicted together, for it alone).

    Example: ser-cli submit ./clips --wait
    """
    adaptation.check_adapt_options(adapt, timeline)
    if timeline:  # recordings: bounded by SER_MAX_RECORDING_S/_BYTES, not a clip's limits
        settings = settings.model_copy(update={"max_file_bytes": settings.max_recording_bytes})
    submission_id, collected = submit_clips(
        settings,
        paths,
        kind="timeline" if timeline else "predict",
        scheme=labels,
        force=force,
        adapt=adapt,
    )
    if wait:
        wait_and_report(settings, submission_id, as_json, unsupported=collected.unsupported)
    elif as_json:
        render.echo_json({"submission": submission_id, "clips": len(collected.clips)})
    else:
        click.echo(submission_id)


@click.command()
@click.argument("submission", required=False)
@wait_option
@json_option
@click.pass_obj
def resume(settings: Settings, submission: str | None, wait: bool, as_json: bool) -> None:
    """Enqueue again the clips of a submission (default: the latest) that are still pending.

    For when the broker lost queued tasks (a restart without persistence, or an enqueue cut
    short): the database still knows which clips are pending. Safe at any time: a clip that is
    no longer pending is skipped, and a prediction is stored once per clip and model version.

    Example: ser-cli resume 3f2c... --wait
    """
    check_services(settings)
    submission_id = resolve_submission(submission)
    with session_scope() as session:
        if store.submission_kind(session, submission_id) == "train":
            raise click.ClickException(
                f"submission {submission_id} holds training clips; run `ser-cli train` again"
            )
        batches = store.pending_item_batches(session, submission_id, settings.batch_size)
    enqueue(settings, submission_id, batches)
    pending = sum(map(len, batches))
    console.print(f"re-enqueued {pending} pending clips")
    if wait:
        wait_and_report(settings, submission_id, as_json)
    elif as_json:
        render.echo_json({"submission": submission_id, "pending": pending})
    else:
        click.echo(submission_id)


@click.command()
@click.argument("submission", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def status(settings: Settings, submission: str | None, as_json: bool) -> None:
    """State and counts of a submission (default: the latest), whether it was adapted
    (--adapt), and how many of the ensemble's predictions are uncertain.

    Example: ser-cli status 3f2c...
    """
    check_services(settings, broker=False)  # a read: it works while the broker is down
    submission_id = resolve_submission(submission)
    if not settings.embedded:
        # Embedded, queueing is processing: a status is no time to start it, a submit is.
        try:
            requeue_stranded(settings, submission_id)
        except ServiceError as error:
            console.print(f"clips not queued: {error.message}", style="yellow", markup=False)
    with session_scope() as session:
        counts = store.status_counts(session, submission_id)
        uncertain = store.uncertain_counts(session, submission_id)
        adapted = store.submission_adapted(session, submission_id)
    state = "processing" if counts.get("pending") else "finished"
    if as_json:
        render.echo_json(
            {
                "submission": submission_id,
                "state": state,
                "adapted": adapted,
                "counts": counts,
                **uncertain,
            }
        )
    else:
        render.print_status(submission_id, state, counts, adapted=adapted)
        render.print_uncertain(uncertain)
