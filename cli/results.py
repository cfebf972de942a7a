"""`results`: a submission's rows as a table, CSV, JSON or a file; by default one row per clip,
the ensemble's, and every model's with --all-models. `submissions`: the list to pick from."""

from pathlib import Path

import click

from cli import render, safe, tables
from cli.render import console
from cli.submit import resolve_submission
from cli.wait import check_services
from ser_worker.config import Settings
from ser_worker.labels import EMOTION_NAMES, EMOTIONS, ENSEMBLE, RESULT_MODELS
from ser_worker.service import store
from ser_worker.service.db.session import session_scope


class EmotionType(click.ParamType):
    """An emotion as its code or its name (labels.EMOTION_NAMES), in any case: SAD, sad, Sad."""

    name = "emotion"
    _codes = {code.lower(): code for code in EMOTIONS} | {
        name: code for code, name in EMOTION_NAMES.items()
    }

    def convert(self, value, param, ctx) -> str:
        code = self._codes.get(str(value).strip().lower())
        if code is None:
            choices = ", ".join(f"{code} ({name})" for code, name in EMOTION_NAMES.items())
            self.fail(f"{value!r} is not an emotion; use one of {choices}", param, ctx)
        return code


def file_format(output: Path | None, output_format: str | None) -> str:
    """The format to print or write: --format, else the --output file's extension, else table."""
    if output is None:
        return output_format or "table"
    by_name = tables.RESULT_FILE_FORMATS.get(output.suffix.lower())
    if by_name is None:
        known = ", ".join(tables.RESULT_FILE_FORMATS)
        raise click.UsageError(
            f"cannot tell a format from {safe.plain(output.name)!r}; name the file {known}"
        )
    if output_format not in (None, by_name):
        raise click.UsageError(f"--format {output_format} but the file name says {by_name}")
    if by_name == "parquet":
        tables.parquet_library()  # before any work: fails clearly without pandas
    return by_name


@click.command()
@click.argument("submission", required=False)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["table", "csv", "json"]),
    help="How to print [default: table; with --output, the file's extension].",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file instead; the format from its extension: .csv, .json, "
    ".parquet (needs pandas).",
)
@click.option(
    "--model",
    "models",
    type=click.Choice(RESULT_MODELS),
    multiple=True,
    help="Only these models (repeatable); default the ensemble.",
)
@click.option("--all-models", is_flag=True, help="A row per clip and model, every member's too.")
@click.option(
    "--emotion",
    "emotions",
    type=EmotionType(),
    multiple=True,
    help="Only clips predicted as these emotions: code or name, any case (repeatable).",
)
@click.option(
    "--min-confidence",
    type=click.FloatRange(0, 1),
    help="Only predictions at least this confident (0 to 1).",
)
@click.option(
    "--uncertain/--certain",
    "uncertain",
    default=None,
    help="Only uncertain predictions (the best class below the model version's threshold), "
    "or only the others.",
)
@click.option(
    "--sort",
    type=click.Choice(store.SORT_KEYS),
    help="Most confident first, by clip name, or by emotion; default submission order.",
)
@click.option("--limit", type=click.IntRange(min=1), help="At most this many rows.")
@click.pass_obj
def results(
    settings: Settings,
    submission: str | None,
    output_format: str | None,
    output: Path | None,
    models: tuple[str, ...],
    all_models: bool,
    emotions: tuple[str, ...],
    min_confidence: float | None,
    uncertain: bool | None,
    sort: str | None,
    limit: int | None,
) -> None:
    """The results of a submission (default: the latest; any unique id prefix), one row per
    clip with the ensemble's prediction; a failed clip shows its error, an uncertain
    prediction a ? after its confidence.

    Example: ser-cli results --emotion sad --min-confidence 0.8 --sort confidence -o sad.csv
    """
    if models and all_models:
        raise click.UsageError("--model and --all-models: give one of them")
    fmt = file_format(output, output_format)
    check_services(settings, broker=False)
    submission_id = resolve_submission(submission)
    from cli.timeline import recording_results  # a timeline's recordings: one summary row each

    if output is None and recording_results(submission_id, fmt, models):
        return
    with session_scope() as session:
        version, available = store.submission_models(session, submission_id)
        wanted = _models(version, available, models or (available if all_models else (ENSEMBLE,)))
        rows = store.result_rows(
            session,
            submission_id,
            models=wanted,
            emotions=emotions,
            min_confidence=min_confidence,
            uncertain=uncertain,
            sort=sort,
            limit=limit,
        )
        below = store.uncertain_counts(session, submission_id)["uncertain_below"]
    if output is not None:
        tables.write_results(rows, output, fmt)
    else:
        tables.print_results(rows, fmt, show_model=len(wanted) > 1)
    if not rows:
        console.print("no rows match")
    render.uncertain_note(rows, below, marked=fmt == "table" and output is None)
    render.adapted_note(any(row["adapted"] for row in rows))
    clips = {(row["clip"], row["sha256"]): row["seen_in_training"] for row in rows}
    render.seen_warning(sum(clips.values()), len(clips))


def _models(version: str | None, available: tuple[str, ...], asked: tuple[str, ...]) -> list:
    """The asked models this version predicts; a clear error when it predicts none of them."""
    missing = [model for model in asked if model not in available]
    if missing:
        message = (
            f"model version {version} has no {', '.join(missing)}; "
            f"its results are {', '.join(available)}"
        )
        if len(missing) == len(asked):
            raise click.ClickException(message)
        console.print(f"[yellow]{message}[/]")
    return [model for model in asked if model in available]


@click.command()
@click.argument("submission", required=False)
@click.option(
    "--kind",
    "kinds",
    type=click.Choice(["predict", "evaluate", "train"]),
    multiple=True,
    help="Only submissions of this kind (repeatable).",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="At most this many."
)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (full ids).")
@click.pass_obj
def submissions(
    settings: Settings,
    submission: str | None,
    kinds: tuple[str, ...],
    limit: int,
    as_json: bool,
) -> None:
    """Past submissions, newest first: id, created, kind, whether adapted (--adapt), clips per
    status, model version.

    Any unique prefix of an id works wherever a command takes one.

    Example: ser-cli submissions --kind evaluate; ser-cli results 3f2c
    """
    check_services(settings, broker=False)
    ids = (resolve_submission(submission),) if submission else ()
    with session_scope() as session:
        listing = store.submissions_listing(session, ids=ids, kinds=kinds, limit=limit)
    if as_json:
        render.echo_json(listing, indent=2)
    else:
        tables.print_submissions(listing)
