"""``ser-cli``: submit audio, follow it, read results, train and evaluate models.

The CLI talks to the database and the broker only; it never imports TensorFlow or librosa
(except in embedded mode, where the tasks it enqueues run in this process). Each command family
lives in its own module; this one holds the group and registers them.
"""

import logging

import click

from ser_worker.config import SettingsError, get_settings

try:
    # The command modules read the settings when imported (the Celery app is configured from
    # them): a bad SER_* value is reported as one line naming it, not as a traceback.
    get_settings()
except SettingsError as error:
    raise SystemExit(f"Error: {error}") from None

from cli import admin, evaluate, models, results, runs, submit, timeline, train  # noqa: E402
from cli.wait import GuardedGroup  # noqa: E402


@click.group(cls=GuardedGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ser")
@click.pass_context
def cli(context: click.Context) -> None:
    """Speech emotion recognition as a batch service.

    Configure with SER_* environment variables (see the README); with none set, everything
    runs in this process on SQLite under ~/.local/share/ser.
    """
    try:
        settings = get_settings()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    # Log records go to stderr with the notes, never into the data on stdout. basicConfig adds
    # the handler only where none is installed; the level is SER_LOG_LEVEL's either way.
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(settings.log_level or logging.WARNING)
    if settings.embedded:
        # The tasks run in this process: the same thread budget and quiet TensorFlow as a
        # worker's, set before anything loads TensorFlow.
        from ser_worker.service import runtime

        runtime.configure_threads()
    context.obj = settings


for command in (
    submit.submit,
    submit.resume,
    submit.status,
    evaluate.evaluate,
    evaluate.evaluations,
    results.results,
    results.submissions,
    train.train,
    runs.runs_command,
    models.models_command,
    admin.verify_crema_d_command,
    admin.db,
    timeline.timeline,
):
    cli.add_command(command)
