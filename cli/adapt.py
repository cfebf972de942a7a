"""`submit --adapt`: per-submission adaptation, and what the CLI refuses before anything is
stored (too few clips, a version without an adapted head, a timeline)."""

import click

from cli import safe

adapt_option = click.option(
    "--adapt",
    is_flag=True,
    help="Per-submission adaptation, for at least 20 clips from one recording setup (one call "
    "centre, microphone, language): the speech encoder's vectors are standardised by this "
    "submission's own statistics. The clips are standardised together, so each answer depends "
    "on the others, and one worker processes the whole submission in one task. Needs a model "
    "version with an adapted head; not with --timeline.",
)


def check_adapt_options(adapt: bool, timeline: bool) -> None:
    if adapt and timeline:
        raise click.UsageError(
            "--adapt and --timeline: a recording's segments cannot be adapted to; give one"
        )


def check_enough_to_adapt(files: int) -> None:
    """The clips are standardised by their own statistics: too few cannot stand for a recording
    setup (models.encoder.MIN_ADAPT_CLIPS)."""
    # Imported here, only for --adapt: it brings numpy (librosa is loaded lazily, not run).
    from ser_worker.models.encoder.head import MIN_ADAPT_CLIPS

    if files < MIN_ADAPT_CLIPS:
        raise click.ClickException(
            f"--adapt needs at least {MIN_ADAPT_CLIPS} clips from one recording setup; "
            f"found {files}: submit them without --adapt"
        )


def check_version_adapts(version: str, can_adapt: bool) -> None:
    if not can_adapt:
        raise click.ClickException(
            f"model version {safe.plain(version)} cannot adapt to a submission (its bundle has "
            "no adapted head): submit without --adapt, or activate a version that can"
        )
