"""`ser-cli results` and `ser-cli submissions` on an embedded SQLite store, through Click's runner.

Rows are written through the store API, never by running a model, so these take seconds.
"""

import csv
import io
import json
import os
import sys
import types
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from cli import render, tables
from cli.main import cli
from ser_worker.bundle import read_manifest, shipped_bundle_bytes
from ser_worker.config import get_settings
from ser_worker.labels import EMOTIONS, RESULT_MODELS
from ser_worker.service import store
from ser_worker.service.db.migrate import upgrade_database
from ser_worker.service.db.models import Submission
from ser_worker.service.db.session import get_engine, session_scope

TEST_DATA = Path(__file__).resolve().parents[1] / "data"
# A manifest like a version trained by the service: clips it learnt from listed by hash.
TRAINED = {
    "version": "v-trained",
    "models": {"cnn1d": {}},
    "split": {"train_speakers": ["ravdess:01"], "val_speakers": [], "test_speakers": []},
    "training_data": {"sha256": [store.sha256_hex(b"learnt")]},
}


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


def shipped_manifest() -> dict:
    return read_manifest(shipped_bundle_bytes()).to_dict()


def add_version(manifest: dict) -> int:
    with session_scope() as session:
        found = store.find_version(session, manifest["version"])
        if found is not None:
            return found.id
        version = store.register_version(
            session, manifest["version"].encode(), manifest, source="trained", activate=False
        )
        return version.id


def add_submission(manifest: dict, clips: list[dict], *, kind="predict", age_s: float = 0) -> str:
    """A submission whose clips are done (with `predictions`: model -> (emotion, confidence)),
    failed (with `error_code`) or pending (with neither)."""
    version_id = add_version(manifest)
    uploads = [
        store.ClipUpload(
            clip["name"],
            clip.get("data", clip["name"].encode()),
            true_emotion=clip.get("true"),
        )
        for clip in clips
    ]
    with session_scope() as session:
        submission = store.create_submission(
            session, uploads, kind=kind, label_scheme="auto", model_version_id=version_id
        )
        submission.created_at = datetime.now(UTC) - timedelta(seconds=age_s)
        rows = []
        for item, clip in zip(submission.items, clips, strict=True):
            if "error_code" in clip:
                item.status, item.error_code = "failed", clip["error_code"]
                item.error = clip.get("error", "it went wrong")
            elif "predictions" in clip:
                item.status = "done"
                for model, (emotion, confidence) in clip["predictions"].items():
                    rows.append(_prediction(item.sha256, version_id, model, emotion, confidence))
        store.save_predictions(session, rows, overwrite=False)
        return submission.id


def _prediction(sha256, version_id, model, emotion, confidence) -> dict:
    rest = (1 - confidence) / (len(EMOTIONS) - 1)
    probabilities = {code: confidence if code == emotion else rest for code in EMOTIONS}
    return {
        "sha256": sha256,
        "model_version_id": version_id,
        "model": model,
        "emotion": emotion,
        "confidence": confidence,
        "probabilities": probabilities,
        "uncertain": confidence < 0.5,  # as a bundle without a calibration record marks it
    }


def every_model(emotion: str, confidence: float) -> dict:
    return dict.fromkeys(RESULT_MODELS, (emotion, confidence))


def run(*args: str):
    result = CliRunner().invoke(cli, list(args))
    return result


def results_json(*args: str) -> list[dict]:
    result = run("results", *args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


CLIPS = [
    {"name": "mine/a.wav", "predictions": every_model("SAD", 0.91), "true": "SAD"},
    {"name": "mine/b.wav", "predictions": every_model("ANG", 0.55)},
    {"name": "mine/c.wav", "predictions": every_model("SAD", 0.72)},
    {"name": "mine/broken.wav", "error_code": "too_short", "error": "clip is 0.08 s"},
    {"name": "mine/later.wav"},
]


# --- submissions and id prefixes ---------------------------------------------------------------


def test_submissions_lists_kind_counts_and_version_newest_first(data_dir):
    old = add_submission(shipped_manifest(), CLIPS[:2], kind="evaluate", age_s=60)
    new = add_submission(TRAINED, CLIPS[3:])

    listing = json.loads(run("submissions", "--json").stdout)
    table = run("submissions").stdout

    assert [entry["submission"] for entry in listing] == [new, old]
    assert listing[0]["counts"] == {"failed": 1, "pending": 1} and listing[0]["clips"] == 2
    assert listing[1]["kind"] == "evaluate" and listing[1]["counts"] == {"done": 2}
    assert listing[1]["model_version"] == shipped_manifest()["version"]
    assert "created_at" in listing[0]
    assert new[:8] in table and new not in table  # the short id people can type
    assert "1 failed, 1 pending" in table and "v-trained" in table and "evaluate" in table
    evaluate_only = json.loads(run("submissions", "--kind", "evaluate", "--json").stdout)
    assert [entry["submission"] for entry in evaluate_only] == [old]


@pytest.mark.parametrize(
    "command",
    [["status", "--json"], ["resume", "--json"], ["submissions", "--json"], ["results"]],
)
def test_a_unique_prefix_names_a_submission_everywhere(data_dir, command):
    first = add_submission(TRAINED, [CLIPS[0]], age_s=60)  # nothing pending: resume runs no model
    latest = add_submission(TRAINED, [CLIPS[0]])
    prefix = next(first[:n] for n in range(1, 33) if not latest.startswith(first[:n]))
    name, *flags = command
    if name == "results":
        flags = ["--format", "json"]

    # In any case, and with the "..." of the help's examples.
    result = run(name, prefix.upper() + "...", *flags)

    assert result.exit_code == 0, result.output
    assert first in result.stdout and latest not in result.stdout


def test_an_ambiguous_or_unknown_prefix_names_the_candidates(data_dir, monkeypatch):
    ids = iter(["abc1" + "0" * 28, "abc2" + "0" * 28, "ffff" + "0" * 28])
    monkeypatch.setattr(
        "ser_worker.service.store.submissions.uuid.uuid4",
        lambda: types.SimpleNamespace(hex=next(ids)),
    )
    for _ in range(3):
        add_submission(TRAINED, [CLIPS[0]])

    ambiguous = run("status", "abc")
    unknown = run("results", "0123")
    nonsense = run("submissions", "not-an-id")

    assert ambiguous.exit_code == 1
    assert "matches several" in ambiguous.output
    assert "abc10000" in ambiguous.output and "abc20000" in ambiguous.output
    assert "ffff" not in ambiguous.output
    for result in (unknown, nonsense):
        assert result.exit_code == 1
        assert "no submission id starts with" in result.output
        assert "ffff0000" in result.output  # the latest, to pick from
    assert run("status", "abc2").exit_code == 0


# --- rows: one per clip, filters, sorting ------------------------------------------------------


def test_by_default_one_row_per_clip_the_ensembles(data_dir):
    add_submission(TRAINED | {"encoder": {}, "models": {"cnn1d": {}, "cnn2d": {}}}, CLIPS)

    default = results_json()
    everything = results_json("--all-models")

    assert [row["clip"] for row in default] == [clip["name"] for clip in CLIPS]
    assert {row["model"] for row in default} == {"ensemble"}
    # --all-models keeps the format of one object per clip and model, failed clips included.
    assert len(everything) == len(CLIPS) * len(RESULT_MODELS)
    assert {row["model"] for row in everything} == set(RESULT_MODELS)


def test_pending_clips_say_pending(data_dir):
    add_submission(TRAINED, CLIPS)

    (later,) = [row for row in results_json() if row["clip"] == "mine/later.wav"]
    table = run("results").stdout

    assert later["status"] == "pending" and later["emotion"] is None
    assert "pending" in table


def test_min_confidence_and_sort(data_dir):
    add_submission(TRAINED, CLIPS)

    confident = results_json("--min-confidence", "0.7")
    by_confidence = results_json("--sort", "confidence")
    by_clip = results_json("--sort", "clip")
    by_emotion = results_json("--sort", "emotion", "--limit", "3")

    assert [row["clip"] for row in confident] == ["mine/a.wav", "mine/c.wav"]
    assert [row["confidence"] for row in by_confidence[:3]] == [0.91, 0.72, 0.55]
    assert {row["status"] for row in by_confidence[3:]} == {"failed", "pending"}
    assert [row["clip"] for row in by_clip] == sorted(clip["name"] for clip in CLIPS)
    assert [(row["emotion"], row["clip"]) for row in by_emotion] == [
        ("ANG", "mine/b.wav"),
        ("SAD", "mine/a.wav"),
        ("SAD", "mine/c.wav"),
    ]
    assert run("results", "--min-confidence", "1.5").exit_code == 2


@pytest.mark.parametrize("spelling", ["sad", "SAD", "Sad", "sad ", "SaD"])
def test_emotion_by_code_or_name_in_any_case(data_dir, spelling):
    add_submission(TRAINED, CLIPS)

    rows = results_json("--emotion", spelling)

    assert [row["clip"] for row in rows] == ["mine/a.wav", "mine/c.wav"]


def test_emotion_full_names_and_a_clear_error(data_dir):
    add_submission(TRAINED, CLIPS)

    angry = results_json("--emotion", "angry")
    both = results_json("--emotion", "Angry", "--emotion", "sad")
    wrong = run("results", "--emotion", "grumpy")

    assert [row["clip"] for row in angry] == ["mine/b.wav"]
    assert len(both) == 3
    assert wrong.exit_code == 2 and "'grumpy' is not an emotion" in wrong.output
    assert "SAD (sad)" in wrong.output


def test_a_model_the_version_lacks_is_said_not_shown_empty(data_dir):
    add_submission(TRAINED, CLIPS)  # cnn1d and the ensemble only

    missing = run("results", "--model", "cnn2d")
    partly = run("results", "--model", "cnn2d", "--model", "cnn1d", "--format", "json")

    assert missing.exit_code == 1
    assert "model version v-trained has no cnn2d" in missing.output
    assert "cnn1d, ensemble" in missing.output
    assert partly.exit_code == 0 and "has no cnn2d" in partly.stderr
    assert {row["model"] for row in json.loads(partly.stdout)} == {"cnn1d"}


# --- files and CSV -----------------------------------------------------------------------------


def test_csv_has_error_code_and_no_formula_cells(data_dir):
    add_submission(
        TRAINED, [*CLIPS, {"name": "=HYPERLINK(evil).wav", "predictions": every_model("HAP", 0.6)}]
    )

    rows = list(csv.DictReader(io.StringIO(run("results", "--format", "csv").stdout)))

    (broken,) = [row for row in rows if row["clip"] == "mine/broken.wav"]
    assert broken["error_code"] == "too_short" and broken["error"] == "clip is 0.08 s"
    assert broken["status"] == "failed" and broken["emotion"] == ""
    assert rows[-1]["clip"] == "'=HYPERLINK(evil).wav"
    assert {row["seen_in_training"] for row in rows} == {"false"}
    assert float(rows[0]["SAD"]) == pytest.approx(0.91)


def test_output_format_follows_the_file_name(data_dir, tmp_path):
    add_submission(TRAINED, CLIPS)

    to_csv = run("results", "--output", str(tmp_path / "out.CSV"), "--sort", "confidence")
    to_json = run("results", "-o", str(tmp_path / "out.json"), "--all-models")
    unknown = run("results", "-o", str(tmp_path / "out.xlsx"))
    contradicting = run("results", "-o", str(tmp_path / "out.json"), "--format", "csv")

    assert to_csv.exit_code == 0 and "wrote 5 rows" in to_csv.stderr and to_csv.stdout == ""
    with (tmp_path / "out.CSV").open() as file:
        assert next(csv.DictReader(file))["confidence"] == "0.91"
    assert to_json.exit_code == 0
    assert len(json.loads((tmp_path / "out.json").read_text())) == 5 * 2
    assert unknown.exit_code == 2 and ".csv, .json, .parquet" in unknown.output
    assert contradicting.exit_code == 2 and "file name says json" in contradicting.output


def test_parquet_needs_pandas_and_says_so(data_dir, tmp_path, monkeypatch):
    add_submission(TRAINED, CLIPS)
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas raises ImportError

    result = run("results", "-o", str(tmp_path / "out.parquet"))

    assert result.exit_code == 1 and "needs pandas" in result.output
    assert not (tmp_path / "out.parquet").exists()


def test_parquet_goes_through_pandas_when_present(data_dir, tmp_path, monkeypatch):
    add_submission(TRAINED, CLIPS)
    written = {}

    class DataFrame:
        def __init__(self, rows, columns):
            self.rows, self.columns = rows, columns

        def to_parquet(self, path, index):
            written.update(path=path, rows=self.rows, columns=self.columns)

    monkeypatch.setitem(sys.modules, "pandas", types.SimpleNamespace(DataFrame=DataFrame))

    result = run("results", "-o", str(tmp_path / "out.parquet"))

    assert result.exit_code == 0, result.output
    assert written["path"] == tmp_path / "out.parquet" and len(written["rows"]) == 5
    assert "error_code" in written["columns"] and "seen_in_training" in written["columns"]


# --- the table ---------------------------------------------------------------------------------

LONG = "myclips/ravdess/speech/all_actors/Actor_03/03-01-06-01-01-01-03.flac"


def _table(rows, width: int, *, terminal: bool, show_model=False) -> str:
    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=terminal, color_system=None)
    tables.print_results_table(rows, console, show_model=show_model)
    return out.getvalue()


def test_on_a_terminal_folders_are_elided_never_the_file_name(data_dir):
    submission = add_submission(
        TRAINED, [{"name": LONG, "predictions": every_model("FEA", 0.8)}, *CLIPS]
    )
    with session_scope() as session:
        rows = store.result_rows(session, submission, models=["ensemble"])

    narrow = _table(rows, 80, terminal=True)
    wide = _table(rows, 160, terminal=True)
    too_narrow = _table(rows, 40, terminal=True)

    assert "…/03-01-06-01-01-01-03.flac" in narrow and LONG not in narrow
    assert max(len(line) for line in narrow.splitlines()) <= 80
    assert "too_short:" in narrow and "mine/broken.wav" in narrow
    assert LONG in wide and max(len(line) for line in wide.splitlines()) <= 160
    # Narrower than whole file names allow: printed whole, for the terminal to wrap.
    assert LONG in too_narrow and "clip is 0.08 s" in too_narrow


def test_shorten_path_keeps_what_fits():
    assert tables.shorten_path("a/b/c.wav", 20) == "a/b/c.wav"
    assert tables.shorten_path("first/middle/last/clip.wav", 20) == "…/last/clip.wav"
    assert tables.shorten_path("first/middle/last/clip.wav", 21) == "first/…/last/clip.wav"
    assert tables.shorten_path("first/middle/last/clip.wav", 9) == "clip.wav"
    assert tables.shorten_path("x/a_very_long_file_name.wav", 5) == "a_very_long_file_name.wav"


def test_piped_the_table_is_plain_and_keeps_whole_names(data_dir):
    add_submission(TRAINED, [{"name": LONG, "predictions": every_model("FEA", 0.8)}, *CLIPS])

    text = run("results").stdout

    assert LONG in text
    assert "│" not in text and "━" not in text
    assert text.splitlines()[0].split() == [
        "clip",
        "status",
        "emotion",
        "conf",
        "true",
        "note",
    ]
    assert all(line == line.rstrip() for line in text.splitlines())


def test_a_failed_clip_takes_one_row_with_its_error(data_dir):
    add_submission(TRAINED | {"encoder": {}}, CLIPS)

    text = run("results", "--all-models").stdout
    lines = text.splitlines()

    broken = [line for line in lines if "broken.wav" in line]
    later = [line for line in lines if "later.wav" in line]
    assert len(broken) == 1 and "too_short: clip is 0.08 s" in broken[0]
    assert len(later) == 1 and "pending" in later[0]
    assert len([line for line in lines if "mine/a.wav" in line]) == 3  # cnn1d, encoder, ensemble


def test_names_cannot_carry_markup_or_control_characters(data_dir):
    add_submission(
        TRAINED, [{"name": "[bold]x[/]\x1b[2J.wav", "predictions": every_model("HAP", 0.6)}]
    )

    text = run("results").stdout

    assert "[bold]x[/]\\x1b[2J.wav" in text and "\x1b" not in text


# --- seen in training --------------------------------------------------------------------------


def _committed_clips() -> list[dict]:
    return [
        {
            "name": str(Path("data") / path.relative_to(TEST_DATA)),
            "data": path.read_bytes(),
            "predictions": every_model("ANG", 1.0),
        }
        for path in sorted(TEST_DATA.rglob("*.flac"))
    ]


def test_the_committed_clips_are_flagged_as_the_shipped_models_training_data(data_dir, monkeypatch):
    clips = _committed_clips()
    assert len(clips) == 12
    others = [
        {
            "name": "mine/03-01-05-01-01-01-21.wav",
            "predictions": every_model("ANG", 0.5),
        },  # actor 21
        {"name": "mine/03-01-02-01-01-01-01.wav", "predictions": every_model("NEU", 0.5)},  # calm
        {"name": "mine/03-02-05-01-01-01-01.wav", "predictions": every_model("ANG", 0.5)},  # song
        {"name": "recording.wav", "predictions": every_model("SAD", 0.5)},
    ]
    submission = add_submission(shipped_manifest(), clips + others)

    rows = results_json("--all-models")
    table = run("results")

    seen = {row["clip"] for row in rows if row["seen_in_training"]}
    assert seen == {clip["name"] for clip in clips}
    assert "12 of 16 clips were in this model's training data" in table.stderr
    assert "their scores are not a test" in table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[-1] == "seen"
    assert all(line.endswith("yes") == (line.split()[0] in seen) for line in lines[1:])
    with session_scope() as session:
        summary = store.submission_summary(session, submission)
    assert (summary["seen_in_training"], summary["clips"]) == (12, 16)
    err = io.StringIO()
    monkeypatch.setattr(render, "console", Console(file=err, width=200))
    render.print_summary(summary)
    assert "12 of 16 clips were in this model's training data" in err.getvalue()


def test_a_version_listing_hashes_is_matched_by_content_alone(data_dir):
    clips = [
        # Named like a training speaker's clip, but not among the hashes: a test clip.
        {
            "name": "03-01-05-01-01-01-01.wav",
            "data": b"other",
            "predictions": every_model("ANG", 0.5),
        },
        {"name": "renamed.wav", "data": b"learnt", "predictions": every_model("ANG", 0.5)},
    ]
    add_submission(TRAINED, clips)

    rows = results_json()

    assert [row["seen_in_training"] for row in rows] == [False, True]


def test_a_random_split_flags_nothing_by_name(data_dir):
    manifest = {
        "version": "v-random",
        "models": {"cnn1d": {}},
        "split": {"train_speakers": ["ravdess:01"], "test_speakers": ["ravdess:01"]},
    }
    add_submission(
        manifest,
        [{"name": "03-01-05-01-01-01-01.wav", "predictions": every_model("ANG", 0.5)}],
    )

    (row,) = results_json()
    assert row["seen_in_training"] is False
    assert "training data" not in run("results").stderr


def test_a_version_trained_from_the_store_lists_the_clips_it_learnt_from(data_dir, monkeypatch):
    from ser_worker.datasets import LabelledClip
    from ser_worker.service import pipeline

    passed = {}

    def train_and_evaluate(cnn, clips, split, config, **options):
        passed.update(split=split, training_data=options["training_data"])
        return "bundle", {}

    # The experiment itself needs Keras; what it is given is the point here.
    experiment = types.SimpleNamespace(train_and_evaluate=train_and_evaluate)
    monkeypatch.setitem(sys.modules, "ser_worker.training.experiment", experiment)
    speakers = [f"ravdess:{n:02d}" for n in range(1, 7)]
    clips = [
        LabelledClip(Path(f"{speaker}-{emotion}.wav"), emotion, speaker, "store")
        for speaker in speakers
        for emotion in EMOTIONS
    ]
    prepared = [types.SimpleNamespace(cnn=None, encoder=None) for _ in clips]
    hashes = [store.sha256_hex(str(i).encode()) for i in range(len(clips))]
    data = pipeline.TrainingData(clips=clips, prepared=prepared, sha256s=hashes)
    with session_scope() as session:
        run_id = store.create_training_run(session, [], label_scheme="auto", params={})

    pipeline.train_run(run_id, {"split": "speaker"}, data)

    split = passed["split"]
    learnt = passed["training_data"]["sha256"]
    assert split.test and learnt == sorted(hashes[i] for i in (*split.train, *split.val))
    assert not set(learnt) & {hashes[i] for i in split.test}


def test_an_evaluation_says_how_many_clips_the_model_learnt_from(data_dir, monkeypatch):
    clips = _committed_clips()[:3] + [
        {"name": "recording.wav", "predictions": every_model("SAD", 0.5), "true": "SAD"}
    ]
    submission = add_submission(shipped_manifest(), clips, kind="evaluate")
    with session_scope() as session:
        store.save_evaluation(session, session.get(Submission, submission))
        report = store.evaluation_report(session, submission)
    err = io.StringIO()
    monkeypatch.setattr(render, "console", Console(file=err, width=200))

    render.print_evaluation(report)

    assert report["seen_in_training"] == 3 and report["n_clips"] == 4
    assert "3 of 4 clips were in this model's training data" in err.getvalue()


def test_evaluations_take_an_id_prefix_too(data_dir):
    evaluated = add_submission(TRAINED, [CLIPS[0]], kind="evaluate", age_s=60)
    other = add_submission(TRAINED, [CLIPS[0]])
    with session_scope() as session:
        store.save_evaluation(session, session.get(Submission, evaluated))
    prefix = next(evaluated[:n] for n in range(1, 33) if not other.startswith(evaluated[:n]))

    shown = run("evaluations", prefix.upper() + "...", "--json")
    not_evaluated = run("evaluations", other)

    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["submission"] == evaluated
    assert not_evaluated.exit_code == 1 and "no stored evaluation" in not_evaluated.output
