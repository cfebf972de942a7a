"""`uncertain` from the bundle to the user (#14): the migration that backfills it, the flag the
pipeline and the timeline store, `ser-cli results` (column, `?`, --uncertain/--certain), the
counts of the submit summary and `status`, and the Python API. SQLite, no model run."""

import csv
import io
import json
import os
import types
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from click.testing import CliRunner
from rich.console import Console

import migrations
from cli import render
from cli.main import cli
from ser_worker.bundle.records import MemberPrediction
from ser_worker.config import get_settings
from ser_worker.labels import EMOTIONS
from ser_worker.segments import Segment
from ser_worker.service import pipeline, recordings, runtime, store
from ser_worker.service.db.migrate import upgrade_database
from ser_worker.service.db.models import Prediction, SegmentPrediction
from ser_worker.service.db.session import get_engine, session_scope
from ser_worker.service.store import segments as timeline_store
from tests.unit.test_results_cli import TRAINED, add_submission, every_model

# A version whose calibration record puts the threshold at 0.7, not 0.5.
CALIBRATED = {**TRAINED, "version": "v-calibrated", "calibration": {"uncertain_below": 0.7}}
CLIPS = [
    {"name": "a.wav", "predictions": every_model("SAD", 0.91)},
    {"name": "b.wav", "predictions": every_model("ANG", 0.45)},
    {"name": "c.wav", "predictions": every_model("HAP", 0.62)},
    {"name": "broken.wav", "error_code": "too_short", "error": "clip is 0.08 s"},
    {"name": "later.wav"},
]


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


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def calibrated_submission(clips=CLIPS) -> str:
    """CLIPS predicted by a version whose threshold is 0.7: stored as its bundle marks them."""
    submission = add_submission(CALIBRATED, clips)
    with session_scope() as session:
        for row in session.scalars(sa.select(Prediction)):
            row.uncertain = row.confidence < 0.7
    return submission


def probabilities(emotion: str, confidence: float) -> dict[str, float]:
    rest = (1 - confidence) / (len(EMOTIONS) - 1)
    return {code: confidence if code == emotion else rest for code in EMOTIONS}


# --- the migration ------------------------------------------------------------------------------


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", migrations.__path__[0])
    config.set_main_option("sqlalchemy.url", url)
    return config


def check_backfill(url: str) -> None:
    """On a schema at revision 0003, rows stored without `uncertain` get `confidence < 0.5` from
    `alembic upgrade head`, and the column is NOT NULL, false unless given. Shared with the
    PostgreSQL test in tests/service/test_migrations.py."""
    engine = sa.create_engine(url)
    now = datetime.now(UTC)
    confidences = {1: 0.3, 2: 0.5, 3: 0.9}
    with engine.begin() as connection:
        schema = sa.MetaData()
        schema.reflect(connection)  # the tables as revision 0003 made them

        def insert(table: str, **row) -> None:
            connection.execute(schema.tables[table].insert().values(**row))

        insert("audio_blobs", sha256="a" * 64, size_bytes=1, data=b"x", created_at=now)
        insert(
            "model_versions",
            id=1,
            version="v-old",
            source="trained",
            active=False,
            created_at=now,
            bundle_sha256="b" * 64,
            bundle=b"b",
            manifest={},
        )
        insert(
            "submissions",
            id="s" * 32,
            kind="timeline",
            label_scheme="none",
            model_version_id=1,
            force=False,
            created_at=now,
        )
        insert(
            "submission_items",
            id=1,
            submission_id="s" * 32,
            sha256="a" * 64,
            filename="r.wav",
            status="pending",
        )
        for n, confidence in confidences.items():
            common = dict(model_version_id=1, emotion="SAD", confidence=confidence)
            insert(
                "predictions",
                id=n,
                sha256="a" * 64,
                model=f"m{n}",
                probabilities={},
                created_at=now,
                **common,
            )
            insert("segments", id=n, item_id=1, index=n, start_s=n, end_s=n + 1, status="done")
            insert(
                "segment_predictions",
                id=n,
                segment_id=n,
                model="ensemble",
                probabilities={},
                **common,
            )
    command.upgrade(alembic_config(url), "head")
    expected = [(1, True), (2, False), (3, False)]
    with engine.begin() as connection:
        for table in ("predictions", "segment_predictions"):
            found = connection.execute(sa.text(f"SELECT id, uncertain FROM {table} ORDER BY id"))
            assert [(n, bool(flag)) for n, flag in found] == expected, table
        connection.execute(
            sa.text(
                "INSERT INTO segment_predictions (id, segment_id, model_version_id, model, "
                "emotion, confidence, probabilities) VALUES (4, 1, 1, 'cnn1d', 'SAD', 0.1, '{}')"
            )
        )
        default = connection.scalar(sa.text("SELECT uncertain FROM segment_predictions WHERE id=4"))
        assert default is not None and not default
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as connection:
        connection.execute(sa.text("UPDATE predictions SET uncertain = NULL WHERE id = 1"))
    engine.dispose()


def test_the_migration_backfills_uncertain_from_the_confidence(tmp_path):
    url = f"sqlite:///{tmp_path / 'ser.db'}"
    command.upgrade(alembic_config(url), "0003")

    check_backfill(url)

    # And it goes back and forth.
    command.downgrade(alembic_config(url), "0003")
    command.upgrade(alembic_config(url), "head")


# --- the stored flag ----------------------------------------------------------------------------


class FakeBundle:
    """Predicts each clip as its `answers` say, marking as a bundle with threshold 0.7 does."""

    def __init__(self, answers: list[tuple[str, float]]):
        self.answers = answers

    def prepare(self, y, sampling_rate, limits):
        return types.SimpleNamespace(duration_s=1.0)

    def predict_prepared(self, clips, *, batch_size=64, adapt=False):
        return [
            {
                model: MemberPrediction.from_probabilities(
                    list(probabilities(emotion, confidence).values()), uncertain_below=0.7
                )
                for model in ("cnn1d", "ensemble")
            }
            for (emotion, confidence), _ in zip(self.answers, clips, strict=True)
        ]


def test_clip_predictions_store_the_bundles_flag(data_dir):
    submission = add_submission(CALIBRATED, [{"name": "x.wav"}, {"name": "y.wav"}])
    with session_scope() as session:
        version_id = store.find_version(session, "v-calibrated").id
        pending = store.result_rows(session, submission, models=("ensemble",))
        prepared = {row["sha256"]: object() for row in pending}
        bundle = FakeBundle([("SAD", 0.62), ("ANG", 0.91)])
        rows = pipeline.prediction_rows(version_id, prepared, bundle)
        store.save_predictions(session, rows, overwrite=False)
        stored = {
            (p.model, round(p.confidence, 2)): p.uncertain
            for p in session.scalars(sa.select(Prediction))
        }

    # 0.62 is above the old fixed 0.5 but below this bundle's 0.7: uncertain as stored.
    assert stored == {
        ("cnn1d", 0.62): True,
        ("ensemble", 0.62): True,
        ("cnn1d", 0.91): False,
        ("ensemble", 0.91): False,
    }
    assert all("uncertain" in row for row in rows)


def test_segment_predictions_store_the_flag_and_the_timeline_reads_it(data_dir, monkeypatch):
    with session_scope() as session:
        version = store.register_version(
            session, b"b", {"version": "v1"}, source="trained", activate=True
        )
        submission = store.create_submission(
            session,
            [store.ClipUpload("r.wav", b"r")],
            kind=timeline_store.TIMELINE,
            label_scheme="none",
            model_version_id=version.id,
        )
        item = submission.items[0]
        found = [Segment(s, s + 1.0) for s in (0.0, 2.0)]
        timeline_store.save_segments(session, item.id, found, first_index=0)
        timeline_store.save_recording(
            session, item, found, duration_s=4, chunk_s=30, stored_bytes=1
        )
        submission_id, item_id = submission.id, item.id
    bundle = FakeBundle([("SAD", 0.62), ("ANG", 0.91)])
    monkeypatch.setattr(runtime, "bundle_for", lambda session, version_id: bundle)
    monkeypatch.setattr(runtime, "audio_limits", lambda: None)
    monkeypatch.setattr(recordings.SegmentAudio, "read", lambda self, segment: None)

    with session_scope() as session:
        (batch,) = timeline_store.pending_segment_batches(session, item_id, 8)
        assert recordings.predict_segments(session, batch) == {"done": 2, "failed": 0}
    with session_scope() as session:
        stored = session.scalars(sa.select(SegmentPrediction.uncertain)).all()
        listed = timeline_store.timeline_rows(session, submission_id, models=("ensemble",))

    assert sorted(stored) == [False, False, True, True]
    # 0.62: above the old fixed 0.5, below this bundle's 0.7. The stored flag is the answer.
    assert [(round(row["confidence"], 2), row["uncertain"]) for row in listed] == [
        (0.62, True),
        (0.91, False),
    ]


# --- ser-cli results ----------------------------------------------------------------------------


def test_results_carry_the_flag_in_json_csv_and_the_table(data_dir):
    calibrated_submission()

    rows = json.loads(run("results", "--format", "json").stdout)
    table = run("results")
    csv_rows = list(csv.DictReader(io.StringIO(run("results", "--format", "csv").stdout)))

    assert [row["uncertain"] for row in rows] == [False, True, True, None, None]
    assert [row["uncertain"] for row in csv_rows] == ["false", "true", "true", "", ""]
    assert list(csv_rows[0]).index("uncertain") == list(csv_rows[0]).index("confidence") + 1
    cells = {line.split()[0]: line.split() for line in table.stdout.splitlines()[1:]}
    assert "0.91" in cells["a.wav"] and "0.45?" in cells["b.wav"] and "0.62?" in cells["c.wav"]
    assert "2 of 3 predictions uncertain (best class < 0.70)" in table.stderr
    assert "marked ? after the confidence" in table.stderr
    assert "uncertain" not in run("results", "--certain").stderr


def test_results_filter_uncertain_or_certain(data_dir):
    calibrated_submission()

    def clips(*flags: str) -> list[str]:
        result = run("results", "--format", "json", *flags)
        assert result.exit_code == 0, result.output
        return [row["clip"] for row in json.loads(result.stdout)]

    assert clips("--uncertain") == ["b.wav", "c.wav"]
    assert clips("--certain") == ["a.wav"]
    assert clips("--uncertain", "--min-confidence", "0.5") == ["c.wav"]
    assert clips("--uncertain", "--emotion", "angry") == ["b.wav"]
    assert len(clips("--all-models", "--uncertain")) == 2 * 2  # cnn1d and the ensemble
    assert clips() == [clip["name"] for clip in CLIPS]  # no flag: every row, failed included


# --- the summaries ------------------------------------------------------------------------------


def test_the_submit_summary_counts_the_ensembles_uncertain_clips(data_dir, monkeypatch):
    submission = calibrated_submission()
    with session_scope() as session:
        # One member less sure than the ensemble: only the ensemble's flags count.
        cnn1d = session.scalar(
            sa.select(Prediction).where(Prediction.model == "cnn1d", Prediction.confidence > 0.9)
        )
        cnn1d.uncertain = True
        summary = store.submission_summary(session, submission)
    err = io.StringIO()
    monkeypatch.setattr(render, "console", Console(file=err, width=200))

    render.print_summary(summary)

    assert (summary["uncertain"], summary["predicted"]) == (2, 3)
    assert summary["uncertain_below"] == pytest.approx(0.7)
    assert "uncertain (ensemble): 2 of 3 clips (best class < 0.70)" in err.getvalue()
    json.dumps(summary)


def test_status_counts_them_too_at_the_versions_threshold(data_dir):
    calibrated_submission()
    add_submission(TRAINED, CLIPS)  # no calibration record: 0.5

    latest = run("status")
    as_json = json.loads(run("status", "--json").stdout)

    assert latest.exit_code == 0, latest.output
    assert "finished" not in latest.stdout  # later.wav is pending
    assert "uncertain (ensemble): 1 of 3 clips (best class < 0.50)" in latest.stderr
    assert (as_json["uncertain"], as_json["predicted"], as_json["uncertain_below"]) == (1, 3, 0.5)


def test_nothing_predicted_says_nothing_about_uncertainty(data_dir):
    add_submission(TRAINED, [{"name": "later.wav"}])

    result = run("status")

    assert result.exit_code == 0 and "uncertain" not in result.output


# --- the Python API -----------------------------------------------------------------------------


def test_the_api_prediction_carries_the_ensembles_flag():
    from ser_worker.api import Prediction as ApiPrediction
    from ser_worker.api import Recognizer

    recognizer = object.__new__(Recognizer)  # no bundle loaded: only the answer's shape
    recognizer.bundle = types.SimpleNamespace(version="v")
    sure = MemberPrediction("SAD", 0.9, probabilities("SAD", 0.9), uncertain=False)
    unsure = MemberPrediction("SAD", 0.6, probabilities("SAD", 0.6), uncertain=True)

    result = recognizer._prediction("x.wav", {"cnn1d": sure, "ensemble": unsure})
    failed = ApiPrediction(None, None, {}, "v", {}, "bad.wav", "empty", "empty file")

    assert result.uncertain is True and result.per_member["cnn1d"].uncertain is False
    as_dict = result.to_dict()
    assert as_dict["uncertain"] is True and as_dict["per_member"]["cnn1d"]["uncertain"] is False
    assert failed.uncertain is None and failed.to_dict()["uncertain"] is None
