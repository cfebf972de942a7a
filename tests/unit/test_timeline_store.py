"""The timeline's store on SQLite (schema by Alembic): the JSON rows' order and keys, a replayed
segment batch stored once, a recording finished only when its last segment is, and the
per-recording summary of `ser-cli results`."""

from pathlib import Path

import pytest
from sqlalchemy import func, select

from ser_worker.labels import EMOTIONS
from ser_worker.segments import Segment
from ser_worker.service import store
from ser_worker.service.db.migrate import upgrade_database
from ser_worker.service.db.models import SegmentPrediction
from ser_worker.service.db.session import session_scope
from ser_worker.service.store import segments as timeline_store


@pytest.fixture
def url(tmp_path):
    url = f"sqlite:///{tmp_path / 'ser.db'}"
    upgrade_database(url)
    return url


def _probabilities(emotion: str, confidence: float) -> dict[str, float]:
    rest = (1 - confidence) / (len(EMOTIONS) - 1)
    return {code: confidence if code == emotion else rest for code in EMOTIONS}


def _submission(session, names=("b.wav", "a.wav", "quiet.wav")):
    version = store.register_version(
        session, b"bundle", {"version": "v1", "models": ["cnn1d"]}, source="trained", activate=True
    )
    uploads = [store.ClipUpload(name, name.encode()) for name in names]
    submission = store.create_submission(
        session,
        uploads,
        kind=timeline_store.TIMELINE,
        label_scheme="none",
        model_version_id=version.id,
    )
    return submission, version


def test_segments_are_listed_by_recording_then_start_and_finished_once(url):
    with session_scope(url) as session:
        submission, version = _submission(session)
        first, second, quiet = submission.items
        # Stored out of time order: the listing sorts by start.
        timeline_store.save_segments(
            session, first.id, [Segment(5.0, 7.0), Segment(1.0, 3.0)], first_index=0
        )
        timeline_store.save_segments(session, second.id, [Segment(0.5, 2.0)], first_index=0)
        timeline_store.save_recording(
            session,
            first,
            [Segment(5.0, 7.0), Segment(1.0, 3.0)],
            duration_s=9,
            chunk_s=30,
            stored_bytes=10,
        )
        timeline_store.save_recording(
            session, second, [Segment(0.5, 2.0)], duration_s=3, chunk_s=30, stored_bytes=5
        )
        timeline_store.save_recording(session, quiet, [], duration_s=4, chunk_s=30, stored_bytes=2)
        session.flush()
        assert quiet.status == "done" and "no speech" in quiet.error
        (batch,) = timeline_store.pending_segment_batches(session, first.id, 8)
        segments = timeline_store.claim_segments(session, batch)
        rows = [
            {
                "segment_id": segment.id,
                "model_version_id": version.id,
                "model": model,
                "emotion": emotion,
                "confidence": confidence,
                "probabilities": _probabilities(emotion, confidence),
                "uncertain": confidence < 0.5,
            }
            for segment, emotion, confidence in zip(
                segments, ("SAD", "ANG"), (0.9, 0.4), strict=True
            )
            for model in ("cnn1d", "ensemble")
        ]
        timeline_store.save_segment_predictions(session, rows)
        timeline_store.save_segment_predictions(session, rows)  # a replayed batch
        for segment in segments:
            segment.status = "done"
        session.flush()
        timeline_store.finish_recordings(session, [first.id, second.id])
        assert first.status == "done" and second.status == "pending"
        assert session.scalar(select(func.count()).select_from(SegmentPrediction)) == 4

        listed = timeline_store.timeline_rows(session, submission.id, models=("ensemble", "cnn1d"))
        summaries = timeline_store.recording_summaries(session, submission.id)

    assert [(r["recording"], r["start_s"], r["model"]) for r in listed] == [
        ("b.wav", 1.0, "cnn1d"),
        ("b.wav", 1.0, "ensemble"),
        ("b.wav", 5.0, "cnn1d"),
        ("b.wav", 5.0, "ensemble"),
    ]
    assert [r["segment"] for r in listed] == [1, 1, 0, 0]  # the index as stored, start order shown
    assert set(listed[0]) == {
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
    assert [r["uncertain"] for r in listed] == [True, True, False, False]
    b, a, q = summaries
    assert b["dominant_emotion"] == "ANG" and b["speech_share"]["ANG"] == pytest.approx(0.5)
    assert a["dominant_emotion"] is None and a["status"] == "pending"
    assert q["speech_share"] == {} and "no speech" in q["note"]


def test_a_recording_is_committed_and_fanned_out_part_by_part_and_a_replay_adds_nothing(
    url, monkeypatch
):
    """Segmentation commits chunks and settled segments a part at a time and enqueues each
    segment once; a redelivery (the first one died before its last commit) stores no segment
    twice, keeps the indices, and enqueues only what is still pending."""
    from benchmarks.recordings import join_clips, wav_bytes
    from ser_worker.config import get_settings
    from ser_worker.datasets import load_dataset
    from ser_worker.service import recordings
    from ser_worker.service.db.models import Recording, SpeechSegment
    from ser_worker.service.db.session import get_engine

    monkeypatch.setenv("SER_DATABASE_URL", url)
    monkeypatch.setenv("SER_SEGMENT_BATCH_SIZE", "2")
    get_settings.cache_clear()
    get_engine.cache_clear()
    monkeypatch.setattr(recordings, "CHUNK_S", 5.0)
    monkeypatch.setattr(recordings, "PART_CHUNKS", 2)
    clips = load_dataset(Path(__file__).resolve().parents[1] / "data").clips
    signal, _ = join_clips([clip.path for clip in clips], seed=2)
    try:
        with session_scope(url) as session:
            version = store.register_version(
                session, b"b", {"version": "v1"}, source="trained", activate=True
            )
            submission = store.create_submission(
                session,
                [store.ClipUpload("r.wav", wav_bytes(signal))],
                kind=timeline_store.TIMELINE,
                label_scheme="none",
                model_version_id=version.id,
            )
            item_id = submission.items[0].id
        enqueued: list[list[int]] = []
        recordings.segment_recording(item_id, enqueued.append)
        with session_scope(url) as session:
            segments = session.scalars(select(SpeechSegment).order_by(SpeechSegment.index)).all()
            first_ids = [s.id for s in segments]
            assert [s.index for s in segments] == list(range(len(segments)))
            # Several enqueues, before the last commit too, each segment once.
            assert len(enqueued) > 2 and sorted(sum(enqueued, [])) == first_ids
            session.execute(Recording.__table__.delete())  # as if it died before the end
        again: list[list[int]] = []
        recordings.segment_recording(item_id, again.append)
        with session_scope(url) as session:
            ids = session.scalars(select(SpeechSegment.id).order_by(SpeechSegment.index)).all()
            assert session.get(Recording, item_id).n_segments == len(ids)
        assert ids == first_ids and sorted(set(sum(again, []))) == first_ids
    finally:
        get_settings.cache_clear()
        get_engine.cache_clear()
