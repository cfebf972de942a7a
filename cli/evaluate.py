"""`evaluate`: predict labelled clips and report the metrics the last batch stores; and
`evaluations`: the stored evaluations again, later."""

from pathlib import Path
from typing import Any

import click

from cli import render
from cli.render import console
from cli.safe import name, plain
from cli.submit import labels_option, submit_clips
from cli.wait import check_services, poll_until, wait_for_items
from ser_worker.config import Settings
from ser_worker.labels import EMOTIONS
from ser_worker.service import store
from ser_worker.service.db.session import session_scope

plot_option = click.option(
    "--plot",
    "plot_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write the confusion matrix of each model as a PNG into this folder.",
)


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@labels_option
@click.option("--model-version", help="Evaluate this version instead of the active one.")
@click.option("--wait", is_flag=True, help="Wait for the metrics.")
@click.option("--json", "as_json", is_flag=True, help="Print the evaluation as one JSON object.")
@plot_option
@click.pass_obj
def evaluate(
    settings: Settings,
    paths: tuple[Path, ...],
    labels: str,
    model_version: str | None,
    wait: bool,
    as_json: bool,
    plot_dir: Path | None,
) -> None:
    """Predict labelled clips and store accuracy, macro-F1 and confusion matrices.

    --plot needs the metrics, so it implies --wait.

    Example: ser-cli evaluate ./ravdess --labels ravdess --wait --plot ./plots
    """
    submission_id, _ = submit_clips(
        settings, paths, kind="evaluate", scheme=labels, version_name=model_version
    )
    if not wait and plot_dir is None:
        click.echo(submission_id)
        return
    wait_for_items(submission_id)
    # The worker that finishes the last batch stores the evaluation just after the items.
    report = poll_until(lambda session: store.evaluation_report(session, submission_id))
    show_evaluation(report, as_json, plot_dir)


@click.command()
@click.argument("submission", required=False)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@plot_option
@click.pass_obj
def evaluations(
    settings: Settings, submission: str | None, limit: int, as_json: bool, plot_dir: Path | None
) -> None:
    """List stored evaluations (newest first), or show one again by its submission id (a
    unique prefix is enough).

    Example: ser-cli evaluations 3f2c --plot ./plots
    """
    check_services(settings, broker=False)
    if submission is None:
        with session_scope() as session:
            listing = store.evaluations_listing(session, limit)
        if as_json:
            render.echo_json(listing, indent=2)
        else:
            _print_listing(listing)
        return
    with session_scope() as session:
        try:  # the one resolver of id prefixes, as in every command
            submission_id = store.resolve_submission_id(session, submission)
        except store.SubmissionNotFound as error:
            raise click.ClickException(f"no stored evaluation: {plain(error)}") from None
        report = store.evaluation_report(session, submission_id)
    if report is None:
        raise click.ClickException(
            f"no stored evaluation for submission {submission_id}; see `ser-cli evaluations`"
        )
    show_evaluation(report, as_json, plot_dir)


def show_evaluation(report: dict[str, Any], as_json: bool, plot_dir: Path | None) -> None:
    if as_json:
        render.echo_json(report, indent=2)
    else:
        render.print_evaluation(report)
    if plot_dir is not None:
        title = f"{report['model_version']}, submission {report['submission'][:8]}"
        written = write_confusion_plots(report["metrics"], plot_dir, title)
        console.print(f"wrote {len(written)} confusion matrices to {name(plot_dir)}")


def write_confusion_plots(
    metrics: dict[str, dict[str, Any]], directory: Path, title: str
) -> list[Path]:
    """One PNG per model, ``confusion_<model>.png``, each titled with its clip count."""
    from ser_worker.evaluation.metrics import plot_confusion

    return [
        plot_confusion(
            scores["confusion"],
            scores.get("labels", EMOTIONS),
            directory / f"confusion_{model}.png",
            f"{model}: {scores.get('n', '?')} clips\n{title}",
        )
        for model, scores in metrics.items()
        if scores.get("confusion")
    ]


def _print_listing(listing: list[dict[str, Any]]) -> None:
    if not listing:
        console.print("no evaluations yet; run `ser-cli evaluate PATH --wait`")
    for entry in listing:
        f1 = f"{entry['macro_f1']:.3f}" if entry["macro_f1"] is not None else "-"
        accuracy = f"{entry['accuracy']:.3f}" if entry["accuracy"] is not None else "-"
        click.echo(
            f"{entry['submission']}  {entry['created_at'][:19]}  {entry['model_version']}  "
            f"{entry['n_clips']} clips  ensemble accuracy {accuracy}  macro-F1 {f1}"
        )
