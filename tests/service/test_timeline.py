"""Timelines end to end: recordings made of the committed clips (joined with 0.5-2 s pauses over
low noise) through `ser-cli submit --timeline`, Redis, PostgreSQL and two prefork workers; and
the same in embedded mode."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from benchmarks.recordings import join_clips, silence, wav_bytes
from ser_worker.datasets import load_dataset
from ser_worker.labels import EMOTIONS, RESULT_MODELS
from ser_worker.service.db.models import SegmentPrediction, SpeechSegment, SubmissionItem
from ser_worker.service.db.session import session_scope

from .conftest import BIN, REPO, TEST_DATA, register_bundle, run_cli

KEYS = {
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
    "probabilities",
    "uncertain",
}


def _json(result: subprocess.CompletedProcess):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _recordings(folder, repeat=1):
    folder.mkdir()
    dataset = load_dataset(TEST_DATA)
    signal, joined = join_clips(
        [c.path for c in dataset.clips], [c.emotion for c in dataset.clips], seed=7, repeat=repeat
    )
    wav_bytes(signal, folder / "a_joined.wav")
    wav_bytes(silence(8.0), folder / "b_quiet.wav")
    return joined


def _check_contract(rows, submission, version=None):
    assert rows, "no segments"
    for row in rows:
        assert set(row) == KEYS
        assert row["submission"] == submission
        assert row["emotion"] in EMOTIONS and set(row["probabilities"]) == set(EMOTIONS)
        assert row["confidence"] == pytest.approx(max(row["probabilities"].values()))
        assert 0 <= row["start_s"] < row["end_s"]
        assert isinstance(row["uncertain"], bool)
        if version:
            assert row["model_version"] == version
    order = [(r["recording"], r["start_s"]) for r in rows]
    assert order == sorted(order)
    assert {r["recording"] for r in rows} == {"recordings/a_joined.wav"}


@pytest.mark.integration
def test_a_recording_fans_out_over_two_workers_and_each_segment_is_done_once(
    service_env, start_worker, database_url, test_bundle, tmp_path
):
    version = register_bundle(database_url, test_bundle)
    joined = _recordings(tmp_path / "recordings", repeat=2)
    workers = [start_worker("inference", 1, SER_SEGMENT_BATCH_SIZE="2") for _ in range(2)]

    summary = _json(
        run_cli(
            service_env, "submit", str(tmp_path / "recordings"), "--timeline", "--wait", "--json"
        )
    )

    assert summary["status"] == {"done": 2}
    submission = summary["submission"]
    rows = _json(
        run_cli(service_env, "timeline", submission, "--format", "json", "--model", "cnn1d")
    )
    _check_contract(rows, submission, version)
    assert len(rows) >= 0.9 * len(joined)
    every = run_cli(
        service_env,
        "timeline",
        "--format",
        "json",
        *sum((["--model", m] for m in RESULT_MODELS), []),
    )
    models = {r["model"] for r in _json(every)}
    assert models == {"cnn1d", "cnn2d", "ensemble"}  # the fixture bundle has no encoder
    assert "no speech found" in every.stderr
    with session_scope(database_url) as session:
        segments = session.scalar(select(func.count()).select_from(SpeechSegment))
        predictions = session.scalar(select(func.count()).select_from(SegmentPrediction))
        pending = session.scalar(
            select(func.count()).select_from(SpeechSegment).where(SpeechSegment.status != "done")
        )
    assert pending == 0 and predictions == 3 * segments
    per_worker = [worker.tasks_succeeded("ser.predict_segments") for worker in workers]
    assert sum(per_worker) == -(-segments // 2), per_worker  # each batch ran exactly once
    assert all(count > 0 for count in per_worker), per_worker  # and both workers took segments

    results = _json(run_cli(service_env, "results", submission, "--format", "json"))
    joined_row, quiet_row = results
    assert joined_row["dominant_emotion"] in EMOTIONS
    assert sum(joined_row["speech_share"].values()) == pytest.approx(1.0)
    assert quiet_row["status"] == "done" and quiet_row["segments"] == 0
    assert "no speech" in quiet_row["note"]

    plot = tmp_path / "timeline.png"
    drawn = run_cli(service_env, "timeline", submission, "--plot", str(plot))
    assert drawn.returncode == 0, drawn.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_timeline_in_embedded_mode(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("SER_")}
    env["SER_DATA_DIR"] = str(tmp_path / "data")
    _recordings(tmp_path / "recordings")

    summary = _json(
        run_cli(env, "submit", str(tmp_path / "recordings"), "--timeline", "--wait", "--json")
    )

    assert summary["status"] == {"done": 2}
    listed = run_cli(env, "timeline", "--format", "json", "--plot", str(tmp_path / "t.png"))
    _check_contract(_json(listed), summary["submission"])
    assert "no speech found" in listed.stderr
    assert (tmp_path / "t.png").stat().st_size > 10_000
    clips = run_cli(env, "timeline", "--format", "csv")
    assert clips.returncode == 0 and clips.stdout.startswith("submission,recording,sha256,segment")


def _pool_child(worker) -> int:
    pid = worker.process.pid
    [child] = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(child)


def _kill_mid_task(worker, database_url, tries: int = 5) -> None:
    """SIGKILL the pool process until one dies with a task in flight (the master then logs
    WorkerLostError): between two batches it holds none, and killing it then tests nothing."""
    for attempt in range(tries):
        deadline = time.monotonic() + 30
        while True:  # the master forks a new pool process after each kill
            try:
                child = _pool_child(worker)
                break
            except ValueError:
                assert time.monotonic() < deadline, "no pool process came back"
                time.sleep(0.05)
        if attempt:
            time.sleep(0.5)  # a new pool process takes a task at once; its first loads the models
        os.kill(child, signal.SIGKILL)
        reported = time.monotonic() + 2
        while time.monotonic() < reported:
            if "WorkerLostError" in worker.output():
                return
            time.sleep(0.1)
        assert "pending" in _segment_counts(database_url)[0], (
            "every segment was done before a pool process died mid-task"
        )
    raise AssertionError(f"no pool process died with a task in flight in {tries} kills")


def _segment_counts(database_url):
    with session_scope(database_url) as session:
        rows = session.execute(
            select(SpeechSegment.status, func.count()).group_by(SpeechSegment.status)
        ).all()
        predictions = session.scalar(select(func.count()).select_from(SegmentPrediction))
    return dict(rows), predictions


@pytest.mark.integration
def test_a_worker_killed_mid_recording_loses_nothing_and_replays_change_nothing(
    service_env, start_worker, database_url, test_bundle, tmp_path
):
    """SIGKILL of the pool process while segments are being predicted: its task comes back
    (acks late), every segment ends done once; replaying a recording's task or a segment batch
    afterwards stores nothing twice."""
    register_bundle(database_url, test_bundle)
    # Enough segments that predicting them takes seconds, not the one second two copies take.
    _recordings(tmp_path / "recordings", repeat=6)
    worker = start_worker("inference", 1, SER_SEGMENT_BATCH_SIZE="2")
    submitted = _json(
        run_cli(service_env, "submit", str(tmp_path / "recordings"), "--timeline", "--json")
    )
    deadline = time.monotonic() + 120
    while _segment_counts(database_url)[0].get("done", 0) < 2:
        assert time.monotonic() < deadline, "no segment was done in time"
        time.sleep(0.2)
    _kill_mid_task(worker, database_url)

    deadline = time.monotonic() + 240
    status = ["status", submitted["submission"], "--json"]
    while _json(run_cli(service_env, *status))["state"] != "finished":
        assert time.monotonic() < deadline, "the recording was not finished in time"
        time.sleep(1)
    statuses, predictions = _segment_counts(database_url)
    assert set(statuses) == {"done"} and predictions == 3 * statuses["done"]

    with session_scope(database_url) as session:
        item_ids = session.scalars(select(SubmissionItem.id)).all()
        segment_ids = session.scalars(select(SpeechSegment.id).limit(4)).all()
    before = worker.tasks_succeeded("ser.predict_segments")
    for task, args in (("ser.infer", list(item_ids)), ("ser.predict_segments", list(segment_ids))):
        subprocess.run(
            [BIN / "celery", "-A", "ser_worker", "call", task, "--args", json.dumps([args])],
            cwd=REPO,
            env=service_env,
            check=True,
            capture_output=True,
        )
    deadline = time.monotonic() + 60
    while (
        worker.tasks_succeeded("ser.infer") < 2
        or worker.tasks_succeeded("ser.predict_segments") < before + 1
    ):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert _segment_counts(database_url) == (statuses, predictions)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_recording_is_read_from_the_store_a_slice_at_a_time(backend, tmp_path, request):
    import io

    from ser_worker.service import store
    from ser_worker.service.db.migrate import upgrade_database

    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'ser.db'}"
        upgrade_database(url)
    else:
        url = request.getfixturevalue("database_url")
    data = bytes(range(256)) * 40 + b"tail"  # 10,244 bytes: the last slice is short
    with session_scope(url) as session:
        [digest] = store.store_audio(session, [data])
        out = io.BytesIO()
        assert store.copy_audio(session, digest, out, slice_bytes=1000) == len(data)
        with pytest.raises(LookupError):
            store.copy_audio(session, "0" * 64, io.BytesIO())
    assert out.getvalue() == data


def test_a_recording_decodes_the_same_from_its_bytes_and_from_a_file(tmp_path):
    import io

    import numpy as np

    from ser_worker.audio import EmptyAudioError
    from ser_worker.service.recordings import decoded_chunks

    joined = tmp_path / "joined.wav"
    signal, _ = join_clips([c.path for c in load_dataset(TEST_DATA).clips][:6], seed=3, repeat=4)
    wav_bytes(signal, joined)
    data = joined.read_bytes()
    with joined.open("rb") as file:
        from_file = list(decoded_chunks(file, 3600))
    from_bytes = list(decoded_chunks(data, 3600))
    assert len(from_file) == len(from_bytes) >= 2  # more than one 30 s chunk
    for a, b in zip(from_file, from_bytes, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(EmptyAudioError):
        list(decoded_chunks(io.BytesIO(), 3600))
