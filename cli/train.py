"""`train`: labelled clips in, a training run on the training queue, a new model version out."""

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from kombu.exceptions import OperationalError as BrokerError

from cli import runs
from cli.collect import store_clips
from cli.evaluate import write_confusion_plots
from cli.render import console
from cli.safe import name
from cli.submit import collect_or_fail, labels_option
from cli.wait import POLL_SECONDS, ServiceError, check_services, poll
from ser_worker.config import Settings
from ser_worker.labels import DEFAULT_EPOCHS, MODEL_NAMES
from ser_worker.service import store
from ser_worker.service.db.session import session_scope

# How long a queued run may wait before `train --wait` asks whether any worker is there.
NO_WORKER_HINT_S = 10.0


@click.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@labels_option
@click.option(
    "--split",
    type=click.Choice(["speaker", "random"]),
    default="speaker",
    show_default=True,
    help="speaker: no speaker on both sides (honest); random: the study's clip-level split.",
)
@click.option(
    "--models", default=",".join(MODEL_NAMES), show_default=True, help="Comma-separated models."
)
@click.option("--epochs", type=click.IntRange(min=1), default=DEFAULT_EPOCHS, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--promote",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="auto: only if it beats the active version on the same test clips.",
)
@click.option("--wait", is_flag=True, help="Wait for the training job, showing its progress.")
@click.option(
    "--plot",
    "plot_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where --wait writes the new version's confusion matrices and training curves "
    "[default: SER_DATA_DIR/plots/VERSION].",
)
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
    plot_dir: Path | None,
) -> None:
    """Train the chosen models (default: every CNN) on labelled clips, on the training queue,
    and register a model version (with the speech encoder's head when every emotion is there).

    Follow a run later with `ser-cli runs ID`.

    Example: ser-cli train tests/data --epochs 20 --wait
    """
    chosen = tuple(part.strip() for part in models.split(",") if part.strip())
    if not chosen or set(chosen) - set(MODEL_NAMES):
        raise click.BadParameter(f"choose from {','.join(MODEL_NAMES)}", param_hint="--models")
    collected = collect_or_fail([path], labels, settings)
    labelled = [clip for clip in collected.clips if clip.true_emotion]
    if not labelled:
        raise click.ClickException(f"no clip under {path} has a usable label (--labels {labels})")
    check_services(settings)
    # Read and stored a batch at a time; stored audio no run names yet is harmless.
    uploads = store_clips(labelled, max_bytes=settings.max_file_bytes)
    check_trainable(uploads, split, seed)
    params = {"models": list(chosen), "epochs": epochs, "split": split, "seed": seed}
    with session_scope() as session:
        run_id = store.create_training_run(
            session, uploads, label_scheme=labels, params={**params, "promote": promote}
        )
    console.print(
        f"training run {run_id} on {len(uploads)} labelled clips "
        f"({sum(collected.unlabelled.values())} without a usable label); "
        f"follow it with `ser-cli runs {run_id}`"
    )
    if settings.embedded:
        # The run happens in this process either way; a thread lets this one show its progress.
        worker = _run_here(run_id)
    else:
        worker = None
        _enqueue(run_id)
        if not wait:
            click.echo(run_id)
            return
    outcome = follow(run_id, worker)
    if outcome.status == "failed":
        raise click.ClickException(f"training run {run_id} failed: {outcome.error}")
    if not wait:
        click.echo(run_id)
        return
    runs.print_trained(outcome)
    written = write_plots(
        outcome.version, plot_dir or settings.data_dir / "plots" / outcome.version
    )
    if written:
        console.print(f"plots of {outcome.version}: {name(written[0].parent)}")


def check_trainable(uploads: Sequence[store.ClipUpload], split: str, seed: int) -> None:
    """Refuse, before a run is created or queued, clips that the run could not split into
    train, validation and test sides: the same check, and message, in every mode (the audio
    already stored is unreferenced, and harmless)."""
    from ser_worker.datasets import LabelledClip, random_split, speaker_split

    distinct: dict[str, Any] = {}  # the run trains once on each distinct audio content
    for upload in uploads:
        if not upload.error_code:
            distinct.setdefault(upload.sha256 or upload.filename, upload)
    clips = [
        LabelledClip(Path(upload.filename), upload.true_emotion, upload.speaker, "store")
        for upload in distinct.values()
    ]
    splitter = speaker_split if split == "speaker" else random_split
    try:
        made = splitter(clips, seed=seed)
    except ValueError as error:
        raise click.ClickException(f"cannot train on these {len(clips)} clips: {error}") from None
    empty = [side for side in ("train", "val", "test") if not getattr(made, side)]
    if empty:
        raise click.ClickException(
            f"cannot train on these {len(clips)} clips: the {split} split leaves no "
            f"{' and no '.join(empty)} clips ({made.description}); add clips or speakers"
        )


def _enqueue(run_id: int) -> None:
    from ser_worker.service.tasks.training import train as train_task

    try:
        train_task.apply_async(args=[run_id])
    except BrokerError as error:
        raise ServiceError(f"broker unreachable while enqueueing: {error}") from None


def _run_here(run_id: int) -> threading.Thread:
    from ser_worker.service.tasks.training import train as train_task

    def run() -> None:
        try:
            train_task.apply_async(args=[run_id])
        except Exception:  # the task has recorded the failure on the run; follow() reports it
            pass

    worker = threading.Thread(target=run, name=f"ser-train-{run_id}", daemon=True)
    worker.start()
    return worker


def follow(run_id: int, worker: threading.Thread | None = None) -> store.RunOutcome:
    """Print the run's progress lines as the worker stores them, until it finishes."""
    seen = 0
    hint_at = time.monotonic() + NO_WORKER_HINT_S if worker is None else None
    while True:
        alive = worker is None or worker.is_alive()
        lines, seen = poll(lambda session, seen=seen: store.new_progress(session, run_id, seen))
        for line in lines:
            console.print(f"  {name(line)}", highlight=False)
        outcome = poll(lambda session: store.run_outcome(session, run_id))
        if outcome.finished:
            return outcome
        if not alive:
            raise click.ClickException(
                f"training run {run_id} stopped without a result ({outcome.status}); "
                f"see `ser-cli runs {run_id}`"
            )
        if hint_at is not None and outcome.status == "queued" and time.monotonic() > hint_at:
            hint_at = None
            _hint_if_no_worker()
        time.sleep(POLL_SECONDS * 4)


def _hint_if_no_worker() -> None:
    from ser_worker.service.celery_app import TRAINING_QUEUE, workers_consuming

    if workers_consuming(TRAINING_QUEUE) == []:
        console.print(
            f"[yellow]no worker consumes the {TRAINING_QUEUE!r} queue: the run waits until one "
            f"starts, e.g. `celery -A ser_worker worker -Q {TRAINING_QUEUE} -c 1 -l INFO "
            f"-n {TRAINING_QUEUE}@%h`[/]"
        )


def write_plots(version: str, directory: Path) -> list[Path]:
    """The new version's confusion matrix per model (its test side) and training curves."""
    from ser_worker.evaluation.metrics import plot_history

    with session_scope() as session:
        manifest = store.find_version(session, version).manifest
    written = write_confusion_plots(manifest.get("metrics", {}), directory, f"{version} test side")
    for model, history in (manifest.get("history") or {}).items():
        if history:
            path = directory / f"history_{model}.png"
            written.append(plot_history(history, path, f"{model} training ({version})"))
    return written
