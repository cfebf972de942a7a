"""Training, runs, models, evaluations and settings through Click's runner on an embedded SQLite
store in a fresh SER_DATA_DIR.

No model is trained here: where a run must happen, the task's training step is replaced by one
that reports progress and registers a version as the real one does, so these take seconds.
"""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from cli.main import cli
from ser_worker.config import Settings, SettingsError, get_settings
from ser_worker.evaluation.metrics import evaluate, history_figure
from ser_worker.labels import EMOTIONS
from ser_worker.service import pipeline, runtime, store
from ser_worker.service.db.migrate import upgrade_database
from ser_worker.service.db.models import Evaluation, TrainingRun
from ser_worker.service.db.session import get_engine, session_scope
from ser_worker.service.tasks import training as training_tasks

TEST_DATA = Path(__file__).resolve().parents[1] / "data"
REPO = TEST_DATA.parents[1]


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """An empty embedded store in a fresh SER_DATA_DIR, as a new user's first run makes it."""
    for key in [key for key in os.environ if key.startswith("SER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("SER_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    get_engine.cache_clear()
    upgrade_database(get_settings().database)
    yield tmp_path
    get_settings.cache_clear()
    get_engine.cache_clear()


def run_cli(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def text(result) -> str:
    """The output with the console's line wrapping undone."""
    return " ".join(result.output.split())


def scores(n_clips: int = 6) -> dict:
    """Real metrics of a small prediction set, as a run or an evaluation stores them."""
    true = list(EMOTIONS) * (n_clips // len(EMOTIONS))
    predicted = true[1:] + true[:1]
    predicted[0] = true[0]
    return evaluate(true, predicted)


def trained_manifest(name: str, protocol: str = "speaker") -> dict:
    curve = {"loss": [1.5], "accuracy": [0.4], "val_loss": [1.7], "val_accuracy": [0.3]}
    return {
        "version": name,
        "models": {"cnn1d": {}},
        "metrics": {"cnn1d": scores(), "ensemble": scores(12)},
        "history": {"cnn1d": curve},
        "split": {
            "protocol": protocol,
            "description": "...",
            "sizes": {"train": 20, "val": 4, "test": 12},
            "train_speakers": ["ravdess:01", "ravdess:02"],
            "val_speakers": [],
            "test_speakers": ["ravdess:03"] if protocol == "speaker" else [],
        },
    }


def fake_execute(run_id: int) -> dict:
    """The training task's work without a model: progress as the real callback reports it, then
    the registration the real one does (promotion, the replaced version, the run closed)."""
    for epoch in (1, 2):
        pipeline.report_progress(run_id, f"cnn1d epoch {epoch}/2: loss 1.5000")
    with session_scope() as session:
        params = dict(session.get(TrainingRun, run_id).params)
        store.record_split(session, run_id, trained_manifest("x")["split"])
    name = f"v-run-{run_id}"
    with session_scope() as session:
        replaced = store.active_version(session)
        version = store.register_version(
            session, name.encode(), trained_manifest(name), source="trained", activate=False
        )
        promoted = params["promote"] == "always"
        if promoted:
            store.activate_version(session, version)
        metrics = {"new": trained_manifest(name)["metrics"], "active_before": None}
        if promoted and replaced is not None:
            metrics["replaced"] = replaced.version
        run = store.locked_run(session, run_id)
        store.finish_run(session, run, version, metrics=metrics, promoted=promoted)
    return {"run": run_id, "status": "succeeded"}


def add_version(name: str, *, active: bool, manifest: dict | None = None) -> None:
    with session_scope() as session:
        store.register_version(
            session,
            name.encode(),
            manifest or {"version": name},
            source="trained",
            activate=active,
        )


# --- item 3: quiet TensorFlow, live progress, SER_LOG_LEVEL ------------------------------------


def test_the_process_setup_quiets_tensorflow_before_it_loads(data_dir, monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    runtime.configure_threads()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2"
    assert logging.getLogger("absl").level == logging.ERROR


def test_an_exported_tf_log_level_wins(data_dir, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    runtime.configure_threads()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


def test_ser_log_level_sets_the_cli_and_worker_loggers(data_dir, monkeypatch):
    monkeypatch.setenv("SER_LOG_LEVEL", "debug")
    get_settings.cache_clear()
    root = logging.getLogger()
    level = root.level
    try:
        assert run_cli("runs").exit_code == 0
        assert root.level == logging.DEBUG
        assert logging.getLogger("ser_worker").level == logging.DEBUG
    finally:
        root.setLevel(level)
        logging.getLogger("ser_worker").setLevel(logging.NOTSET)


def test_train_wait_shows_each_epoch_and_what_the_promotion_replaced(data_dir, monkeypatch):
    monkeypatch.setattr(training_tasks, "_execute", fake_execute)
    add_version("v-old", active=True)

    result = run_cli(
        "train", str(TEST_DATA / "ravdess"), "--epochs", "2", "--promote", "always", "--wait"
    )

    assert result.exit_code == 0, result.output
    assert "cnn1d epoch 1/2" in result.output and "cnn1d epoch 2/2" in result.output
    assert "replacing v-old" in result.output
    assert "ser-cli models --activate v-old" in result.output
    plots = data_dir / "plots" / "v-run-1"
    assert (plots / "confusion_ensemble.png").stat().st_size > 0
    assert (plots / "history_cnn1d.png").stat().st_size > 0
    assert str(plots) in result.output.replace("\n", "")


# --- item 4: training checked before it is queued; runs; models; settings ----------------------


def test_training_on_one_speaker_is_refused_before_anything_is_queued(data_dir):
    result = CliRunner().invoke(cli, ["train", str(TEST_DATA / "ravdess" / "Actor_01")])

    assert result.exit_code == 1
    assert "a speaker split needs at least 2 speakers; found 1" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    with session_scope() as session:
        assert store.runs_listing(session) == []


def test_runs_lists_cli_and_scheduled_runs_and_shows_one(data_dir, monkeypatch):
    monkeypatch.setattr(training_tasks, "_execute", fake_execute)
    assert run_cli("train", str(TEST_DATA / "ravdess"), "--promote", "never").exit_code == 0
    with session_scope() as session:
        store.schedule_run(session, {"epochs": 3, "split": "speaker", "promote": "auto"})

    listing = run_cli("runs").output
    shown = text(run_cli("runs", "1"))
    as_json = json.loads(run_cli("runs", "1", "--json").output)

    assert " schedule " in listing and " cli " in listing and "v-run-1" in listing
    assert "succeeded" in shown and "20 train / 4 val / 12 test" in shown
    assert "test speakers (1): ravdess:03" in shown
    assert "not promoted" in shown and "--activate v-run-1" in shown
    assert as_json["metrics"]["ensemble"]["n"] == 12 and as_json["promoted"] is False
    assert "no training run 9" in CliRunner().invoke(cli, ["runs", "9"]).output


def test_models_shows_protocol_test_size_and_speakers_of_every_figure(data_dir):
    add_version("v-random", active=False, manifest=trained_manifest("v-random", "random"))
    add_version("v-speaker", active=False, manifest=trained_manifest("v-speaker"))
    shipped = {
        "version": "v-shipped",
        "expected_metrics": {
            "ensemble": {"macro_f1": 0.784, "macro_f1_std": 0.051, "runs": 24},
            "protocol": "speaker-independent RAVDESS, folds of 4 unseen actors",
            "cross_corpus": {
                "protocol": "cross-corpus",
                "ensemble": {"ravdess_to_tess": 0.12, "tess_to_ravdess": 0.2},
                "adapted": {"ravdess_to_tess": 0.5, "tess_to_ravdess": 0.45},
            },
            "conditions": {
                "protocol": "speaker-independent, the speech encoder alone",
                "encoder": {"noise-15dB": 0.752, "clean": 0.79, "telephone": 0.761},
            },
        },
    }
    add_version("v-shipped", active=True, manifest=shipped)

    output = text(run_cli("models"))
    assert (
        "ensemble macro-F1 RAVDESS→TESS 0.120, TESS→RAVDESS 0.200 on a corpus it was not "
        "trained on" in output
    )
    assert "with `submit --adapt`: RAVDESS→TESS 0.500, TESS→RAVDESS 0.450" in output
    assert (
        "encoder macro-F1 when the recording changes: clean 0.790, telephone 0.761, noise-15dB "
        "0.752 (protocol speaker-independent, the speech encoder alone)" in output
    )

    assert "random clip-level split: 12 test clips, from the training speakers" in output
    assert "12 test clips from 1 unseen speaker(s) (ravdess:03)" in output
    assert "expected on unseen speakers (cross-validated over 24 runs" in output
    assert "folds of 4 unseen actors" in output


def test_activating_an_older_version_says_what_it_replaced(data_dir):
    add_version("v-old", active=False)
    add_version("v-new", active=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store.versions, "verify_bundle_bytes", lambda *_: None)
        output = text(run_cli("models", "--activate", "v-old"))
    assert "active model version: v-old (was v-new" in output


def every_command(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if isinstance(command, click.Group):
            yield from every_command(command, (*prefix, name))


def test_dash_h_is_help_everywhere_and_no_help_says_both_cnns(data_dir):
    assert run_cli("-h").output.startswith("Usage: ")
    for path, _command in every_command(cli):
        result = run_cli(*path, "-h")
        assert result.exit_code == 0 and result.output.startswith("Usage: "), path
        assert "both CNNs" not in result.output, path


@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_plain_postgres_urls_mean_psycopg_3(scheme):
    settings = Settings(database_url=f"{scheme}://ser:pw@db:5433/ser")
    assert settings.database == "postgresql+psycopg://ser:pw@db:5433/ser"
    assert get_engine(settings.database).dialect.driver == "psycopg"


def test_an_unreachable_database_names_host_port_and_reason_not_the_password(data_dir, monkeypatch):
    monkeypatch.setenv("SER_DATABASE_URL", "postgres://ser:hunter22@127.0.0.1:1/ser")
    get_settings.cache_clear()
    get_engine.cache_clear()

    result = CliRunner().invoke(cli, ["runs"])

    assert result.exit_code == 1
    assert "127.0.0.1:1/ser" in result.output and "refused" in result.output.lower()
    assert "hunter22" not in result.output and "Traceback" not in result.output


def test_a_bad_setting_is_one_line_naming_the_variable(monkeypatch):
    monkeypatch.setenv("SER_BATCH_SIZE", "lots")
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError, match="SER_BATCH_SIZE='lots'"):
            get_settings()
    finally:
        get_settings.cache_clear()
    env = {**os.environ, "SER_BATCH_SIZE": "lots", "SER_LOG_LEVEL": "loud"}
    done = subprocess.run(
        [sys.executable, "-c", "from cli.main import cli; cli()", "models"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "SER_BATCH_SIZE='lots'" in done.stderr and "SER_LOG_LEVEL='loud'" in done.stderr


# --- item 5: plots and past evaluations ----------------------------------------------------------


def test_a_one_epoch_history_draws_points():
    figure = history_figure({"loss": [1.2], "val_loss": [1.4], "accuracy": [0.5]})
    drawn = [line for ax in figure.axes for line in ax.lines]
    assert drawn and all(line.get_marker() not in (None, "", "None") for line in drawn)


def test_evaluations_lists_and_shows_a_past_evaluation_with_plots(data_dir, tmp_path):
    add_version("v1", active=True)
    with session_scope() as session:
        version = store.active_version(session)
        submission = store.create_submission(
            session, [], kind="evaluate", label_scheme="auto", model_version_id=version.id
        )
        session.add(
            Evaluation(
                submission_id=submission.id,
                model_version_id=version.id,
                n_clips=12,
                skipped=0,
                metrics={"ensemble": scores(12), "cnn1d": scores()},
            )
        )
        submission_id = submission.id

    listing = run_cli("evaluations").output
    shown = text(run_cli("evaluations", submission_id[:6], "--plot", str(tmp_path / "p")))

    assert submission_id in listing and "12 clips" in listing
    assert submission_id in shown and "ensemble accuracy 0.083" in shown
    assert (tmp_path / "p" / "confusion_ensemble.png").stat().st_size > 0
    assert (tmp_path / "p" / "confusion_cnn1d.png").stat().st_size > 0
    assert "no stored evaluation" in CliRunner().invoke(cli, ["evaluations", "zz"]).output


def test_train_on_a_fresh_store_says_how_to_get_the_default_model_back(data_dir, monkeypatch):
    monkeypatch.setattr(training_tasks, "_execute", fake_execute)
    shipped = store.shipped_version_name()

    output = text(run_cli("train", str(TEST_DATA), "--promote", "always", "--wait"))
    assert f"instead of the shipped default {shipped}" in output
    assert f"ser-cli models --activate {shipped}" in output

    rolled_back = text(run_cli("models", "--activate", shipped))
    assert f"active model version: {shipped} (was v-run-1" in rolled_back
    with session_scope() as session:
        assert store.active_version(session).version == shipped


def test_a_distributed_wait_prints_the_progress_the_worker_stored(data_dir, capsys):
    from cli import train as train_command

    with session_scope() as session:
        run_id, _ = store.schedule_run(session, {"epochs": 1})
        session.get(TrainingRun, run_id).status = "failed"
    for line in ("extracting features of 12 clips", "cnn1d epoch 1/1: loss 1.0"):
        pipeline.report_progress(run_id, line)

    outcome = train_command.follow(run_id)

    assert outcome.status == "failed"
    assert "extracting features" in capsys.readouterr().err.replace("\n", " ")


def test_a_queue_nobody_consumes_gets_a_hint(monkeypatch, capsys):
    from cli import train as train_command
    from ser_worker.service import celery_app

    monkeypatch.setattr(celery_app, "workers_consuming", lambda queue: [])
    train_command._hint_if_no_worker()
    assert "no worker consumes the 'training' queue" in capsys.readouterr().err


# --- item 3 in submit/wait: the id first, a bar in clips, a hint when no worker listens ----------


class RecordingBar:
    """Stands in for the Rich progress bar and keeps what it was told."""

    def __init__(self, *_args, **_kwargs) -> None:
        self.total, self.done, self.descriptions = 0, 0, []

    def __enter__(self):
        return self

    def __exit__(self, *_exc) -> None:
        return None

    def add_task(self, description: str, total: int) -> int:
        self.total = total
        self.descriptions.append(description)
        return 0

    def update(self, _task, advance: int = 0, completed=None, description=None) -> None:
        self.done = completed if completed is not None else self.done + advance
        if description:
            self.descriptions.append(description)


def test_submit_prints_its_id_first_and_counts_clips_not_batches(data_dir, monkeypatch):
    from cli import submit as submit_command
    from ser_worker.service.tasks.inference import infer

    bars: list[RecordingBar] = []

    def recording_bar(*_args) -> RecordingBar:
        bars.append(RecordingBar())
        return bars[-1]

    monkeypatch.setattr(submit_command, "progress", recording_bar)
    monkeypatch.setenv("SER_BATCH_SIZE", "4")
    get_settings.cache_clear()
    add_version("v1", active=True)

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(infer, "apply_async", interrupted)
    result = CliRunner().invoke(cli, ["submit", str(TEST_DATA / "ravdess"), "--wait"])

    with session_scope() as session:
        submission_id = store.latest_submission_id(session)
    assert f"submission {submission_id}: 6 clips" in result.output  # before the interruption
    assert bars[0].total == 6 and bars[0].descriptions[0] == "loading the model…"


def test_waiting_on_a_queue_nobody_consumes_gets_a_hint(monkeypatch, capsys):
    from cli import wait
    from ser_worker.service import celery_app

    polls = iter([{"pending": 2}, {"pending": 2}, {"done": 2}])
    monkeypatch.setattr(wait, "NO_WORKER_HINT_S", 0.0)
    monkeypatch.setattr(wait, "POLL_SECONDS", 0.0)
    monkeypatch.setattr(wait, "progress", RecordingBar)
    monkeypatch.setattr(wait, "session_scope", NullSession)
    monkeypatch.setattr(wait.store, "status_counts", lambda session, sid: next(polls))
    monkeypatch.setattr(celery_app, "workers_consuming", lambda queue: [])

    wait.wait_for_items("s1")

    assert "no worker consumes the 'inference' queue" in capsys.readouterr().err


class NullSession:
    def __enter__(self):
        return None

    def __exit__(self, *_exc) -> None:
        return None
