"""``ser-cli``: submit audio, follow it, read results, train and evaluate models.

The CLI talks to the database and the broker only; it never imports TensorFlow or librosa
(except in embedded mode, where the tasks it enqueues run in this process).
"""

import csv
import dataclasses
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from kombu.exceptions import OperationalError as BrokerError
from kombu.utils.url import maybe_sanitize_url
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.exc import OperationalError as DatabaseError
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.orm import Session

from cli.collect import NothingToSubmit, collect
from ser_worker.bundle import BundleError
from ser_worker.config import Settings, get_settings
from ser_worker.datasets import SCHEMES, verify_crema_d
from ser_worker.evaluation.metrics import evaluate as evaluate_metrics
from ser_worker.labels import DEFAULT_EPOCHS, EMOTIONS, ENSEMBLE, RESULT_MODELS
from ser_worker.service import store
from ser_worker.service.celery_app import app
from ser_worker.service.db.models import Evaluation, ModelVersion, Submission, TrainingRun
from ser_worker.service.db.session import session_scope

console = Console(stderr=True)
POLL_SECONDS = 0.5
T = TypeVar("T")


class ServiceError(click.ClickException):
    """The database or broker cannot be reached, or the store cannot serve the request."""


def _check_services(settings: Settings) -> None:
    """Fail fast with a clear message instead of leaving a submission nobody will process."""
    try:
        if settings.database.startswith("sqlite"):
            store.upgrade_database()
        with session_scope() as session:
            session.scalar(select(ModelVersion.id).limit(1))
    except (DatabaseError, ProgrammingError) as error:
        raise ServiceError(
            f"database unavailable or not migrated ({settings.database.split('@')[-1]}): "
            f"{type(error.orig).__name__}. Is it running? Run `ser-cli db upgrade` once."
        ) from None
    if not settings.embedded:
        try:
            with app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=5)
        except (BrokerError, OSError) as error:
            broker = maybe_sanitize_url(settings.broker_url)
            raise ServiceError(f"broker unreachable ({broker}): {error}") from None


@click.group()
@click.version_option(package_name="ser")
@click.pass_context
def cli(context: click.Context) -> None:
    """Speech emotion recognition as a batch service.

    Configure with SER_* environment variables (see the README); with none set, everything
    runs in this process on SQLite under ~/.local/share/ser.
    """
    context.obj = get_settings()


# --- submit / evaluate -------------------------------------------------------------------------

labels_option = click.option(
    "--labels",
    # Labels are read per file name here; a path,label CSV is a dataset-level layout
    # (datasets.load_dataset) that per-file labelling cannot read.
    type=click.Choice([scheme for scheme in SCHEMES if scheme != "csv"]),
    default="auto",
    show_default=True,
    help="How to read the true emotion from file names (for accuracy in the summary).",
)


def _submit(
    settings: Settings,
    paths: tuple[Path, ...],
    *,
    kind: str,
    scheme: str,
    version_name: str | None = None,
    force: bool = False,
) -> tuple[str, Any]:
    try:
        collected = collect(list(paths), scheme=scheme, max_bytes=settings.max_file_bytes)
    except NothingToSubmit as error:
        raise click.ClickException(str(error)) from None
    _check_services(settings)
    with session_scope() as session:
        if version_name:
            version = store.find_version(session, version_name)
            if version is None:
                raise click.ClickException(
                    f"no model version {version_name!r}; see `ser-cli models`"
                )
        else:
            try:
                version = store.ensure_active_version(session)
            except (store.NoModelError, BundleError) as error:
                raise click.ClickException(str(error)) from None
        submission = store.create_submission(
            session,
            collected.uploads,
            kind=kind,
            label_scheme=scheme,
            model_version_id=version.id,
            force=force,
        )
        batches = store.pending_item_batches(session, submission.id, settings.batch_size)
    for path in collected.unsupported:
        reason = "folder not readable" if Path(path).is_dir() else "not a supported audio file"
        console.print(f"[yellow]skipped[/] {path}: {reason}")
    _enqueue(settings, submission.id, batches)
    return submission.id, collected


def _enqueue(settings: Settings, submission_id: str, batches: list[list[int]]) -> None:
    from ser_worker.service.tasks.inference import infer

    with _progress(settings.embedded) as progress:
        task = progress.add_task(
            "processing" if settings.embedded else "enqueueing", total=len(batches)
        )
        for batch in batches:
            try:
                infer.apply_async(args=[batch])
            except BrokerError as error:
                raise ServiceError(
                    f"broker unreachable while enqueueing: {error}. The submission is stored; "
                    f"once the broker is back, run `ser-cli resume {submission_id}`."
                ) from None
            progress.advance(task)


def _progress(visible: bool = True) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not visible or not console.is_terminal,
    )


def _poll(read: Callable[[Session], T]) -> T:
    """``read(session)`` for a waiting loop, waiting out a database outage as the workers do."""
    warned = False
    while True:
        try:
            with session_scope() as session:
                return read(session)
        except DatabaseError as error:
            if not warned:
                console.print(
                    f"[yellow]database unavailable ({type(error.orig).__name__}); "
                    "waiting for it to come back[/]"
                )
                warned = True
            time.sleep(POLL_SECONDS * 4)


def _wait_for_items(submission_id: str) -> None:
    with session_scope() as session:
        total = sum(store.status_counts(session, submission_id).values())
    with _progress() as progress:
        task = progress.add_task("waiting", total=total)
        while True:
            counts = _poll(lambda session: store.status_counts(session, submission_id))
            progress.update(task, completed=total - counts.get("pending", 0))
            if not counts.get("pending"):
                return
            time.sleep(POLL_SECONDS)


def _summary(submission_id: str) -> dict[str, Any]:
    with session_scope() as session:
        rows = store.result_rows(session, submission_id)
        counts = store.status_counts(session, submission_id)
    ensemble = [row for row in rows if row["model"] == ENSEMBLE]
    summary: dict[str, Any] = {
        "submission": submission_id,
        "status": dict(counts),
        "emotions": dict(Counter(row["emotion"] for row in ensemble if row["emotion"])),
        "failed": [
            {"clip": row["clip"], "error_code": row["error_code"], "error": row["error"]}
            for row in ensemble
            if row["status"] == "failed"
        ],
    }
    outcomes = store.labelled_outcomes(rows)
    if outcomes:
        summary["metrics"] = {
            model: {
                k: v
                for k, v in evaluate_metrics(*pair).items()
                if k in ("accuracy", "macro_f1", "n")
            }
            for model, pair in outcomes.items()
        }
    return summary


def _print_summary(summary: dict[str, Any]) -> None:
    status = ", ".join(f"{count} {name}" for name, count in sorted(summary["status"].items()))
    console.print(f"submission {summary['submission']}: {status}")
    if summary["emotions"]:
        console.print(
            "predicted (ensemble): "
            + ", ".join(f"{code} {summary['emotions'].get(code, 0)}" for code in EMOTIONS)
        )
    for failure in summary["failed"]:
        console.print(f"[red]failed[/] {failure['clip']}: {failure['error']}")
    for model, metrics in summary.get("metrics", {}).items():
        console.print(
            f"{model:9s} accuracy {metrics['accuracy']:.3f}  macro-F1 {metrics['macro_f1']:.3f}"
            f"  on {metrics['n']} labelled clips"
        )


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--wait", is_flag=True, help="Follow the submission until every clip is processed.")
@labels_option
@click.option("--force", is_flag=True, help="Recompute predictions that already exist.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.pass_obj
def submit(
    settings: Settings, paths: tuple[Path, ...], wait: bool, labels: str, force: bool, as_json: bool
) -> None:
    """Submit audio files or folders (searched recursively) for emotion recognition.

    Prints the submission id. Each clip is predicted by both CNNs and their ensemble; a clip
    already predicted by the active model version is not recomputed unless --force.

    Example: ser-cli submit ./clips --wait
    """
    submission_id, collected = _submit(settings, paths, kind="predict", scheme=labels, force=force)
    if not wait:
        if as_json:
            click.echo(json.dumps({"submission": submission_id, "clips": len(collected.uploads)}))
        else:
            click.echo(submission_id)
        return
    _wait_and_report(submission_id, as_json, unsupported=collected.unsupported)


def _wait_and_report(submission_id: str, as_json: bool, **extra: Any) -> None:
    _wait_for_items(submission_id)
    summary = {**_summary(submission_id), **extra}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(submission_id)
        _print_summary(summary)


@cli.command()
@click.argument("submission", required=False)
@click.option("--wait", is_flag=True, help="Follow the submission until every clip is processed.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@click.pass_obj
def resume(settings: Settings, submission: str | None, wait: bool, as_json: bool) -> None:
    """Enqueue again the clips of a submission (default: the latest) that are still pending.

    For when the broker lost queued tasks (a restart without persistence, or an enqueue cut
    short): the database still knows which clips are pending. Safe at any time: a clip that is
    no longer pending is skipped, and a prediction is stored once per clip and model version.

    Example: ser-cli resume 3f2c... --wait
    """
    _check_services(settings)
    submission_id = _resolve_submission(submission)
    with session_scope() as session:
        if session.get(Submission, submission_id).kind == "train":
            raise click.ClickException(
                f"submission {submission_id} holds training clips; run `ser-cli train` again"
            )
        batches = store.pending_item_batches(session, submission_id, settings.batch_size)
    _enqueue(settings, submission_id, batches)
    pending = sum(map(len, batches))
    console.print(f"re-enqueued {pending} pending clips")
    if not wait:
        if as_json:
            click.echo(json.dumps({"submission": submission_id, "pending": pending}))
        else:
            click.echo(submission_id)
        return
    _wait_and_report(submission_id, as_json)


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@labels_option
@click.option("--model-version", help="Evaluate this version instead of the active one.")
@click.option("--wait", is_flag=True, help="Wait for the metrics.")
@click.option("--json", "as_json", is_flag=True, help="Print the evaluation as one JSON object.")
@click.pass_obj
def evaluate(
    settings: Settings,
    paths: tuple[Path, ...],
    labels: str,
    model_version: str | None,
    wait: bool,
    as_json: bool,
) -> None:
    """Predict labelled clips and store accuracy, macro-F1 and confusion matrices.

    Example: ser-cli evaluate ./ravdess --labels ravdess --wait --json
    """
    submission_id, _ = _submit(
        settings, paths, kind="evaluate", scheme=labels, version_name=model_version
    )
    if not wait:
        click.echo(submission_id)
        return
    _wait_for_items(submission_id)

    def read_evaluation(session: Session) -> tuple[Evaluation | None, ModelVersion | None]:
        evaluation = session.scalar(
            select(Evaluation).where(Evaluation.submission_id == submission_id)
        )
        if evaluation is None:
            return None, None
        return evaluation, session.get(ModelVersion, evaluation.model_version_id)

    evaluation = None
    while evaluation is None:
        evaluation, version = _poll(read_evaluation)
        if evaluation is None:
            time.sleep(POLL_SECONDS)
    result = {
        "submission": submission_id,
        "model_version": version.version,
        "n_clips": evaluation.n_clips,
        "skipped": evaluation.skipped,
        "metrics": evaluation.metrics,
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(submission_id)
    console.print(
        f"model version {version.version}: {evaluation.n_clips} clips, "
        f"{evaluation.skipped} without a usable label"
    )
    for model, metrics in evaluation.metrics.items():
        pairs = ", ".join(
            f"{pair['true']}→{pair['predicted']} {pair['count']}"
            for pair in metrics["most_confused"][:3]
        )
        console.print(
            f"{model:9s} accuracy {metrics['accuracy']:.3f}  macro-F1 {metrics['macro_f1']:.3f}"
            f"  most confused: {pairs}"
        )


# --- status / results --------------------------------------------------------------------------


def _resolve_submission(submission_id: str | None) -> str:
    with session_scope() as session:
        if submission_id is None:
            submission_id = store.latest_submission_id(session)
            if submission_id is None:
                raise click.ClickException("nothing has been submitted yet")
        elif session.get(Submission, submission_id) is None:
            raise click.ClickException(f"no submission {submission_id}")
    return submission_id


@cli.command()
@click.argument("submission", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_obj
def status(settings: Settings, submission: str | None, as_json: bool) -> None:
    """State and counts of a submission (default: the latest).

    Example: ser-cli status 3f2c...
    """
    _check_services(settings)
    submission_id = _resolve_submission(submission)
    with session_scope() as session:
        counts = store.status_counts(session, submission_id)
    state = "processing" if counts.get("pending") else "finished"
    if as_json:
        click.echo(json.dumps({"submission": submission_id, "state": state, "counts": counts}))
    else:
        click.echo(
            f"{submission_id} {state}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        )


@cli.command()
@click.argument("submission", required=False)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option(
    "--model",
    "models",
    type=click.Choice(RESULT_MODELS),
    multiple=True,
    help="Only these models (repeatable); default all of the version's.",
)
@click.option(
    "--emotion",
    "emotions",
    type=click.Choice(EMOTIONS),
    multiple=True,
    help="Only clips predicted as these emotions (repeatable).",
)
@click.option("--limit", type=click.IntRange(min=1), help="At most this many rows.")
@click.pass_obj
def results(
    settings: Settings,
    submission: str | None,
    output_format: str,
    models: tuple[str, ...],
    emotions: tuple[str, ...],
    limit: int | None,
) -> None:
    """The results table of a submission (default: the latest), one row per clip and model.

    Example: ser-cli results --model ensemble --format csv > results.csv
    """
    _check_services(settings)
    submission_id = _resolve_submission(submission)
    with session_scope() as session:
        rows = store.result_rows(
            session,
            submission_id,
            models=models or RESULT_MODELS,
            emotions=emotions,
            limit=limit,
        )
    if output_format == "json":
        click.echo(json.dumps(rows, indent=2))
    elif output_format == "csv":
        writer = csv.writer(sys.stdout)
        columns = [
            "submission",
            "clip",
            "sha256",
            "status",
            "error",
            "model",
            "model_version",
            "emotion",
            "confidence",
            "true_emotion",
            *EMOTIONS,
        ]
        writer.writerow(columns)
        for row in rows:
            probabilities = row["probabilities"] or {}
            writer.writerow(
                [row[c] for c in columns[: -len(EMOTIONS)]]
                + [probabilities.get(code) for code in EMOTIONS]
            )
    else:
        table = Table("clip", "model", "status", "emotion", "confidence", "true")
        for row in rows:
            confidence = f"{row['confidence']:.2f}" if row["confidence"] is not None else ""
            table.add_row(
                row["clip"],
                row["model"],
                row["status"],
                row["emotion"] or row["error"] or "",
                confidence,
                row["true_emotion"] or "",
            )
        Console().print(table)


# --- training and models -----------------------------------------------------------------------


@cli.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@labels_option
@click.option(
    "--split",
    type=click.Choice(["speaker", "random"]),
    default="speaker",
    show_default=True,
    help="speaker: no speaker on both sides (honest); random: the study's clip-level split.",
)
@click.option("--models", default="cnn1d,cnn2d", show_default=True, help="Comma-separated models.")
@click.option("--epochs", type=click.IntRange(min=1), default=DEFAULT_EPOCHS, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--promote",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="auto: only if it beats the active version on the same test clips.",
)
@click.option("--wait", is_flag=True, help="Wait for the training job to finish.")
@click.pass_obj
def train(
    settings: Settings,
    path: Path,
    labels: str,
    split: str,
    models: str,
    epochs: int,
    seed: int,
    promote: str,
    wait: bool,
) -> None:
    """Train both CNNs on labelled clips, on the training queue, and register a model version.

    Example: ser-cli train ../shared/data/ravdess --labels ravdess --epochs 20 --wait
    """
    from ser_worker.service.tasks.training import train as train_task

    chosen = tuple(name.strip() for name in models.split(",") if name.strip())
    if not chosen or set(chosen) - {"cnn1d", "cnn2d"}:
        raise click.BadParameter("choose from cnn1d,cnn2d", param_hint="--models")
    try:
        collected = collect([path], scheme=labels, max_bytes=settings.max_file_bytes)
    except NothingToSubmit as error:
        raise click.ClickException(str(error)) from None
    uploads = [upload for upload in collected.uploads if upload.true_emotion]
    if not uploads:
        raise click.ClickException(f"no clip under {path} has a usable label (--labels {labels})")
    _check_services(settings)
    with session_scope() as session:
        submission = store.create_submission(
            session, uploads, kind="train", label_scheme=labels, model_version_id=None
        )
        run = TrainingRun(
            trigger="cli",
            submission_id=submission.id,
            params={
                "models": list(chosen),
                "epochs": epochs,
                "split": split,
                "seed": seed,
                "promote": promote,
            },
        )
        session.add(run)
        session.flush()
        run_id = run.id
    console.print(
        f"training run {run_id} on {len(uploads)} labelled clips "
        f"({sum(collected.unlabelled.values())} without a usable label)"
    )
    try:
        train_task.apply_async(args=[run_id])
    except BrokerError as error:
        raise ServiceError(f"broker unreachable while enqueueing: {error}") from None
    if not wait:
        click.echo(run_id)
        return

    def read_run(session: Session) -> tuple[TrainingRun, ModelVersion | None]:
        run = session.get(TrainingRun, run_id)
        if run.model_version_id is None:
            return run, None
        return run, session.get(ModelVersion, run.model_version_id)

    while True:
        run, version = _poll(read_run)
        if run.status in ("succeeded", "failed"):
            break
        time.sleep(POLL_SECONDS * 4)
    if run.status == "failed":
        raise click.ClickException(f"training run {run_id} failed: {run.error}")
    new = run.metrics["new"]
    click.echo(version.version)
    for model, metrics in new.items():
        console.print(
            f"{model:9s} test accuracy {metrics['accuracy']:.3f}"
            f"  macro-F1 {metrics['macro_f1']:.3f}"
        )
    console.print("promoted: active version" if run.promoted else "registered, not promoted")


@cli.command(name="models")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option(
    "--activate",
    metavar="VERSION",
    help="Make VERSION the active model for new submissions (e.g. to roll back), once its "
    "bundle is checked intact.",
)
@click.pass_obj
def models_command(settings: Settings, as_json: bool, activate: str | None) -> None:
    """List model versions and which one is active.

    Example: ser-cli models --json
    """
    _check_services(settings)
    if activate:
        with session_scope() as session:
            version = store.find_version(session, activate)
            if version is None:
                raise click.ClickException(f"no model version {activate!r}; see `ser-cli models`")
            try:
                store.promote_version(session, version)
            except BundleError as error:
                raise click.ClickException(
                    f"model version {activate} not activated, the active one is unchanged: {error}"
                ) from None
        console.print(f"active model version: {activate}")
    with session_scope() as session:
        versions = session.scalars(select(ModelVersion).order_by(ModelVersion.created_at)).all()
        listing = [
            {
                "version": version.version,
                "active": version.active,
                "source": version.source,
                "created_at": version.created_at.isoformat(),
                "metrics": version.manifest.get("metrics", {}),
                "expected_metrics": version.manifest.get("expected_metrics", {}),
                "split": version.manifest.get("split", {}),
            }
            for version in versions
        ]
    if as_json:
        click.echo(json.dumps(listing, indent=2))
        return
    if not listing:
        console.print("no model versions yet; `ser-cli submit` installs the shipped default model")
    for entry in listing:
        marker = "*" if entry["active"] else " "
        click.echo(f"{marker} {entry['version']}  {entry['source']:8s} {_score(entry)}")


def _score(entry: dict) -> str:
    """The ensemble's macro-F1 on the version's test side or, for a bundle trained on every clip
    (no test side), the cross-validated figure expected on unseen speakers."""
    measured = entry["metrics"].get(ENSEMBLE, {})
    if "macro_f1" in measured:
        return f"macro-F1 {measured['macro_f1']:.3f}"
    expected = entry["expected_metrics"].get(ENSEMBLE, {})
    if "macro_f1" in expected:
        # Bundles made before folds were repeated over seeds count "folds" instead of "runs".
        runs = expected.get("runs", expected.get("folds"))
        over = f" over {runs} runs" if runs else ""
        return (
            f"macro-F1 {expected['macro_f1']:.3f} ± {expected['macro_f1_std']:.3f} expected on "
            f"unseen speakers (cross-validated{over})"
        )
    return ""


@cli.command(name="verify-crema-d")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_crema_d_command(path: Path, as_json: bool) -> None:
    """Check a CREMA-D copy against the official checksums of its 7,442 AudioWAV files.

    Reports missing, extra and corrupted files; exit status 1 unless the copy is complete.

    Example: ser-cli verify-crema-d ./CREMA-D/AudioWAV
    """
    report = verify_crema_d(path)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(report) | {"ok": report.ok}, indent=2))
    else:
        click.echo(f"{report.checked} files match the manifest by name")
        for kind in ("missing", "extra", "corrupted"):
            names = getattr(report, kind)
            if names:
                shown = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
                click.echo(f"{len(names)} {kind}: {shown}")
    if not report.ok:
        sys.exit(1)


@cli.group()
def db() -> None:
    """Database schema management."""


@db.command()
@click.pass_obj
def upgrade(settings: Settings) -> None:
    """Migrate the configured database to the latest schema (alembic upgrade head).

    Example: SER_DATABASE_URL=postgresql+psycopg://ser@db/ser ser-cli db upgrade
    """
    try:
        store.upgrade_database()
    except DatabaseError as error:
        raise ServiceError(f"database unavailable: {type(error.orig).__name__}") from None
    click.echo("database schema is up to date")
