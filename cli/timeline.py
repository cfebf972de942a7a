"""`timeline`: the per-segment emotions of a timeline submission's recordings (`ser-cli submit
--timeline`), as a table, CSV or JSON, and optionally as a plot."""

import csv
import sys
from pathlib import Path

import click
from rich.table import Table

from cli import render, safe
from cli.render import console
from cli.submit import resolve_submission
from cli.wait import check_services
from ser_worker.config import Settings
from ser_worker.labels import ENSEMBLE, RESULT_MODELS
from ser_worker.service import store
from ser_worker.service.db.session import session_scope
from ser_worker.service.store import segments as timeline_store

CSV_COLUMNS = (
    "submission",
    "recording",
    "sha256",
    "segment",
    "start_s",
    "end_s",
    "model",
    "model_version",
    "emotion",
    "confidence",
    "uncertain",
)


@click.command("timeline")
@click.argument("submission", required=False)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="How to print the segments.",
)
@click.option(
    "--model",
    "models",
    type=click.Choice(RESULT_MODELS),
    multiple=True,
    help="Only these models (repeatable); default the ensemble.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also draw each recording's timeline to this PNG (the first --model's).",
)
@click.pass_obj
def timeline(
    settings: Settings,
    submission: str | None,
    output_format: str,
    models: tuple[str, ...],
    plot: Path | None,
) -> None:
    """The emotion of each speech segment of the recordings of a timeline submission (default:
    the latest; any unique id prefix), by recording then start time.

    Example: ser-cli submit call.wav --timeline --wait && ser-cli timeline --plot call.png
    """
    check_services(settings, broker=False)
    submission_id = resolve_submission(submission)
    with session_scope() as session:
        if store.submission_kind(session, submission_id) != timeline_store.TIMELINE:
            raise click.ClickException(
                f"submission {submission_id} holds clips, not recordings: see `ser-cli results`; "
                "submit recordings with `ser-cli submit PATH --timeline`"
            )
        rows = timeline_store.timeline_rows(session, submission_id, models=models or (ENSEMBLE,))
        recordings = timeline_store.recordings(session, submission_id)
    if output_format == "json":
        render.echo_json(rows, indent=2)
    elif output_format == "csv":
        _write_csv(rows)
    else:
        _print_table(rows)
    for recording in recordings:
        _note(recording)
    if plot is not None:
        from ser_worker.evaluation.timeline_plot import plot_timeline

        first = (models or (ENSEMBLE,))[0]
        durations = {r["recording"]: r["duration_s"] for r in recordings if r["duration_s"]}
        plot_timeline(
            [row for row in rows if row["model"] == first],
            plot,
            durations=durations,
            title=f"submission {submission_id[: store.SHORT_ID]}",
        )
        console.print(f"plot written to {safe.name(plot)}")


def _note(recording: dict) -> None:
    """What a recording's rows cannot say: that it is still processing, failed or had no speech."""
    name = safe.name(recording["recording"])
    if recording["status"] == "failed":
        console.print(f"[red]failed[/] {name}: {safe.name(recording['error'])}")
    elif recording["status"] == "pending":
        console.print(f"[yellow]processing[/] {name}: not every segment is done yet")
    elif recording["segments"] == 0:
        console.print(f"{name}: no speech found ({recording['duration_s']:.1f} s, 0 segments)")
    elif recording["error"]:
        console.print(f"[yellow]{name}[/]: {safe.name(recording['error'])}")


def _write_csv(rows: list[dict]) -> None:
    emotions = sorted({code for row in rows for code in row["probabilities"]})
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow([*CSV_COLUMNS, *(f"p_{code}" for code in emotions)])
    for row in rows:
        writer.writerow(
            [safe.csv_cell(row[column]) for column in CSV_COLUMNS]
            + [row["probabilities"].get(code) for code in emotions]
        )


def _print_table(rows: list[dict]) -> None:
    table = Table(show_lines=False)
    for column in ("recording", "#", "start", "end", "model", "emotion", "confidence"):
        table.add_column(column, justify="right" if column in ("#", "start", "end") else "left")
    for row in rows:
        table.add_row(
            safe.name(row["recording"]),
            str(row["segment"]),
            f"{row['start_s']:.2f}",
            f"{row['end_s']:.2f}",
            row["model"],
            row["emotion"],
            f"{row['confidence']:.2f}" + (" ?" if row["uncertain"] else ""),
        )
    if rows:
        console.print(table)


def recording_results(submission_id: str, output_format: str, models: tuple[str, ...]) -> bool:
    """`ser-cli results` of a timeline submission: one summary row per recording (its dominant
    emotion and share of speech time per emotion); False for a submission of clips."""
    with session_scope() as session:
        if store.submission_kind(session, submission_id) != timeline_store.TIMELINE:
            return False
        model = models[0] if models else ENSEMBLE
        summaries = timeline_store.recording_summaries(session, submission_id, model=model)
        recordings = {r["recording"]: r for r in timeline_store.recordings(session, submission_id)}
    rows = [
        {"submission": submission_id, **recordings.get(s["recording"], {}), **s} for s in summaries
    ]
    if output_format == "json":
        render.echo_json(rows, indent=2)
    elif output_format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        columns = ("recording", "status", "model", "dominant_emotion", "segments", "speech_s")
        emotions = sorted({code for row in rows for code in row["speech_share"]})
        writer.writerow([*columns, *(f"share_{code}" for code in emotions)])
        for row in rows:
            writer.writerow(
                [safe.csv_cell(row.get(column)) for column in columns]
                + [row["speech_share"].get(code) for code in emotions]
            )
    else:
        table = Table()
        for column in ("recording", "status", "segments", "speech", "dominant", "speech share"):
            table.add_column(column)
        for row in rows:
            shares = sorted(row["speech_share"].items(), key=lambda kv: -kv[1])
            table.add_row(
                safe.name(row["recording"]),
                row["status"],
                str(row.get("segments") if row.get("segments") is not None else "-"),
                f"{row['speech_s']:.1f} s" if row.get("speech_s") is not None else "-",
                row["dominant_emotion"] or "-",
                ", ".join(f"{code} {share:.0%}" for code, share in shares if share > 0)
                or safe.name(row["note"] or "-"),
            )
        console.print(table)
        console.print("per segment: `ser-cli timeline`")
    return True
