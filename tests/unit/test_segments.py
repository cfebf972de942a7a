"""Speech segments: the voice-activity detector on real clips joined with pauses, and the rules
around it (short pauses bridged, long runs cut into overlapping windows) on synthetic frames."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from benchmarks.recordings import join_clips, silence
from ser_worker import segments
from ser_worker.datasets import load_dataset
from ser_worker.labels import SAMPLE_RATE
from ser_worker.segments import (
    FRAME,
    FRAME_S,
    SegmentSettings,
    SpeechDetector,
    segments_from_probabilities,
    speech_segments,
)

TEST_DATA = Path(__file__).resolve().parents[1] / "data"
SETTINGS = SegmentSettings(
    threshold=0.5, min_silence_s=0.3, window_s=6.0, overlap_s=1.5, min_speech_s=0.25
)
FRAGMENTS = replace(SETTINGS, fragment_s=0.75, fragment_pause_s=1.0)


def _frames(*pattern: tuple[float, float]) -> np.ndarray:
    """Probabilities from (seconds, probability) pieces."""
    return np.concatenate([np.full(round(s / FRAME_S), p, np.float32) for s, p in pattern])


def _segments(probabilities: np.ndarray, settings=SETTINGS) -> list[tuple[float, float]]:
    n = len(probabilities) * FRAME
    return [(s.start_s, s.end_s) for s in segments_from_probabilities(probabilities, n, settings)]


def test_a_pause_shorter_than_the_minimum_does_not_split():
    found = _segments(_frames((1, 0.0), (1, 0.9), (0.2, 0.05), (1, 0.9), (1, 0.0)))
    assert len(found) == 1
    assert found[0][0] == pytest.approx(0.9, abs=0.05) and found[0][1] == pytest.approx(
        3.3, abs=0.05
    )


def test_a_longer_pause_splits_and_padding_stays_inside_the_gap():
    found = _segments(_frames((1, 0.0), (1, 0.9), (0.5, 0.05), (1, 0.9), (1, 0.0)))
    assert len(found) == 2
    assert found[0][1] <= found[1][0]


def test_a_long_run_becomes_overlapping_windows_no_longer_than_the_window():
    found = _segments(_frames((1, 0.0), (20, 0.9), (1, 0.0)))
    assert len(found) > 1
    assert all(end - start <= SETTINGS.window_s + 1e-6 for start, end in found)
    assert all(
        b[0] < a[1] - SETTINGS.overlap_s + 1e-3 for a, b in zip(found, found[1:], strict=False)
    )
    assert found[0][0] == pytest.approx(0.9, abs=0.05)
    assert found[-1][1] == pytest.approx(21.1, abs=0.05)


def test_a_fragment_stays_with_the_sentence_it_was_broken_off():
    sentence, fragment = (1.5, 0.9), (0.5, 0.9)
    broken = _frames((1, 0.0), fragment, (0.6, 0.05), sentence, (1, 0.0))
    assert len(_segments(broken)) == 2  # the pause is longer than min_silence_s
    assert len(_segments(broken, FRAGMENTS)) == 1
    # Two sentences keep the same pause between them, and a fragment further off stands alone.
    assert len(_segments(_frames((1, 0.0), sentence, (0.6, 0.05), sentence), FRAGMENTS)) == 2
    assert len(_segments(_frames((1, 0.0), fragment, (1.2, 0.05), sentence), FRAGMENTS)) == 2


def test_a_click_does_not_join_the_sentences_around_it():
    sentence, click = (1.5, 0.9), (0.1, 0.9)
    found = _segments(
        _frames((1, 0.0), sentence, (0.6, 0.05), click, (0.6, 0.05), sentence), FRAGMENTS
    )
    assert len(found) == 2


def test_a_start_reaches_back_over_what_the_backward_pass_hears_as_speech():
    reaching = replace(SETTINGS, reach_back_s=1.0)
    forward = _frames((1, 0.0), (1.5, 0.9), (0.6, 0.0), (2.0, 0.0), (1.5, 0.9), (1, 0.0))
    # Heard backwards, the second run's onset is heard 1.5 s earlier, into its pause.
    backward = _frames((1, 0.0), (1.5, 0.9), (0.6, 0.0), (0.5, 0.0), (3.0, 0.9), (1, 0.0))
    n = len(forward) * FRAME
    plain = segments_from_probabilities(forward, n, SETTINGS)
    found = segments_from_probabilities(forward, n, reaching, backward)
    assert [s.start_s for s in plain] == pytest.approx([0.9, 5.0], abs=0.05)
    # The first run's start does not move (the frames before it are not speech either way); the
    # second reaches back its limit, 1 s, not the 1.5 s the backward pass hears.
    assert [s.start_s for s in found] == pytest.approx([0.9, 4.0], abs=0.05)
    assert [s.end_s for s in found] == [s.end_s for s in plain]
    # What the models read is the forward pass's span, reached back or not.
    assert [s.read_span for s in found] == [s.read_span for s in plain]
    assert found[1].read_span[0] == pytest.approx(5.0, abs=0.05)
    assert segments_from_probabilities(forward, n, SETTINGS, backward) == plain  # 0: off


def test_a_shout_heard_late_is_kept_and_read_from_where_the_forward_pass_heard_it():
    reaching = replace(SETTINGS, reach_back_s=1.0, context_s=0.5)
    # Forward, Silero hears the last 0.15 s of a shout, too short to be a clip; backwards, 1 s.
    forward = _frames((2, 0.0), (0.85, 0.2), (0.15, 0.9), (2, 0.0))
    backward = _frames((2, 0.0), (1.0, 0.9), (2, 0.0))
    n = len(forward) * FRAME
    assert segments_from_probabilities(forward, n, reaching) == []
    (found,) = segments_from_probabilities(forward, n, reaching, backward)
    assert found.start_s == pytest.approx(2.0 - 0.1, abs=0.05)  # reached back, then padded
    assert found.end_s == pytest.approx(3.0 + 0.1, abs=0.05)
    # What the models read starts at the forward onset, padded and with its context.
    assert found.read_span[0] == pytest.approx(2.85 - 0.1 - 0.5, abs=0.05)
    assert found.read_span[1] == pytest.approx(3.0 + 0.1 + 0.5, abs=0.05)


def test_a_start_never_reaches_back_into_the_run_before():
    reaching = replace(SETTINGS, reach_back_s=1.0)
    forward = _frames((1, 0.0), (1.5, 0.9), (0.6, 0.0), (1.5, 0.9), (1, 0.0))
    backward = _frames((1, 0.0), (1.5, 0.9), (0.6, 0.9), (1.5, 0.9), (1, 0.0))
    n = len(forward) * FRAME
    # The pause is reached over whole: the two runs become one, as runs closer than
    # min_silence_s do, and nothing starts before the first run's own start.
    found = segments_from_probabilities(forward, n, reaching, backward)
    assert len(found) == 1 and found[0].start_s == pytest.approx(0.9, abs=0.05)
    assert found[0].read_span[0] == found[0].start_s


def test_the_backward_pass_hears_real_speech_and_keeps_the_frames_in_time_order():
    clip = load_dataset(TEST_DATA).clips[0]
    from ser_worker.audio import load_audio

    y = load_audio(clip.path, trim=False)
    forward = segments.frame_probabilities(y)
    backward = segments.backward_probabilities(y)
    assert backward.shape == forward.shape
    speech, quiet = forward > 0.9, forward < 0.05
    assert speech.sum() > 20 and quiet.sum() > 5
    # Both directions hear the same voice, and the same quiet around it.
    assert np.mean(backward[speech] > 0.5) > 0.9
    assert np.mean(backward[quiet] < 0.5) > 0.8


def test_blips_shorter_than_a_clip_are_not_segments():
    assert _segments(_frames((1, 0.0), (0.1, 0.9), (1, 0.0))) == []


def test_noise_alone_has_no_speech():
    assert speech_segments(silence(6.0), SAMPLE_RATE, SETTINGS) == []


def test_real_clips_joined_with_pauses_are_found_one_segment_each():
    dataset = load_dataset(TEST_DATA)
    signal, joined = join_clips([clip.path for clip in dataset.clips], seed=3)
    found = speech_segments(signal, SAMPLE_RATE, SETTINGS)

    def overlapping(clip):
        return [s for s in found if s.start_s < clip.end_s and s.end_s > clip.start_s]

    one_each = sum(len(overlapping(clip)) == 1 for clip in joined)
    assert one_each >= len(joined) - 2  # docs/RESULTS.md has the measured share on more clips
    assert all(s.duration_s <= SETTINGS.window_s for s in found)


def test_on_real_clips_the_backward_pass_moves_reported_starts_and_nothing_the_models_read():
    """As shipped, starts reach back; on these clips the segments and every span the models read
    are the forward pass's (reading the reached-back audio cost segment accuracy,
    docs/RESULTS.md). Where reaching back joins two runs or keeps a blip, the runs differ."""
    shipped = SegmentSettings.from_settings()
    assert shipped.reach_back_s > 0
    dataset = load_dataset(TEST_DATA)
    signal, _ = join_clips([clip.path for clip in dataset.clips], seed=3)
    found = speech_segments(signal, SAMPLE_RATE, shipped)
    plain = speech_segments(signal, SAMPLE_RATE, replace(shipped, reach_back_s=0.0))
    assert len(found) == len(plain) > 10
    assert [s.read_span for s in found] == [s.read_span for s in plain]
    assert [s.end_s for s in found] == [s.end_s for s in plain]
    moved = [b.start_s - a.start_s for a, b in zip(found, plain, strict=True)]
    assert min(moved) >= 0 and max(moved) > 0.05  # earlier or unchanged, and some do move


def test_joined_clips_lie_the_asked_snr_above_the_background_noise():
    paths = [clip.path for clip in load_dataset(TEST_DATA).clips][:5]
    signal, joined = join_clips(paths, seed=6, snr_db=20.0)
    # The closing pause (the longest pause) is noise alone.
    tail = signal[-int(2.0 * SAMPLE_RATE) :]
    speech_power = np.median(
        [
            np.mean(np.square(signal[int(c.start_s * SAMPLE_RATE) : int(c.end_s * SAMPLE_RATE)]))
            for c in joined
        ]
    )
    measured = 10 * np.log10(speech_power / np.mean(np.square(tail)))
    assert measured == pytest.approx(20.0, abs=0.5)
    assert np.median([c.snr_db for c in joined]) == pytest.approx(20.0, abs=0.01)
    quieter, _ = join_clips(paths, seed=6, snr_db=40.0)
    assert np.std(quieter[-int(2.0 * SAMPLE_RATE) :]) == pytest.approx(np.std(tail) / 10, rel=0.02)


def test_chunked_feeding_finds_the_same_segments_as_one_call():
    dataset = load_dataset(TEST_DATA)
    signal, _ = join_clips([clip.path for clip in dataset.clips][:4], seed=4)
    whole = speech_segments(signal, SAMPLE_RATE, SETTINGS)
    detector = SpeechDetector(SETTINGS)
    for start in range(0, signal.size, 10 * SAMPLE_RATE + 123):
        detector.feed(signal[start : start + 10 * SAMPLE_RATE + 123])
    chunked = detector.segments()
    assert len(chunked) == len(whole)
    for a, b in zip(whole, chunked, strict=True):
        assert abs(a.start_s - b.start_s) < 0.2 and abs(a.end_s - b.end_s) < 0.2


def test_the_models_read_context_up_to_half_a_pause_and_the_recording_edges():
    wide = replace(SETTINGS, context_s=0.5)
    # Speech 1-3 s, a 0.8 s pause, 3.8-5 s, silence to 5.2 s: pads 0.1, then context.
    probabilities = _frames((1, 0.0), (2, 0.9), (0.8, 0.0), (1.2, 0.9), (0.2, 0.0))
    n = len(probabilities) * FRAME
    first, second = segments_from_probabilities(probabilities, n, wide)
    # Reported bounds do not move with the context.
    assert [(first.start_s, first.end_s), (second.start_s, second.end_s)] == _segments(
        probabilities
    )
    # Before the first: the full 0.5 s of the lead-in; between them: each stops half-way
    # into what the pads left of the pause; after the last: the recording's end.
    assert first.read_span[0] == pytest.approx(first.start_s - 0.5, abs=1e-3)
    middle = (first.end_s + second.start_s) / 2
    assert first.read_span[1] == pytest.approx(middle, abs=1e-3)
    assert second.read_span[0] == pytest.approx(middle, abs=1e-3)
    assert second.read_span[1] == pytest.approx(n / SAMPLE_RATE, abs=1e-3)
    assert first.read_span[1] - first.end_s < 0.5  # the pause was too short for all of it


def test_windows_of_a_long_run_take_context_only_at_the_run_edges():
    wide = replace(SETTINGS, context_s=0.5)
    probabilities = _frames((2, 0.0), (14, 0.9), (2, 0.0))
    windows = segments_from_probabilities(probabilities, len(probabilities) * FRAME, wide)
    assert len(windows) >= 3
    assert windows[0].read_span == (
        pytest.approx(windows[0].start_s - 0.5, abs=1e-3),
        windows[0].end_s,
    )
    assert windows[-1].read_span == (
        windows[-1].start_s,
        pytest.approx(windows[-1].end_s + 0.5, abs=1e-3),
    )
    for inner in windows[1:-1]:
        assert inner.read_span == (inner.start_s, inner.end_s)


@pytest.mark.parametrize("settings", [SETTINGS, FRAGMENTS], ids=["pauses", "fragments"])
@pytest.mark.parametrize("context_s", [0.0, 0.5])
def test_settled_segments_are_a_prefix_of_the_final_ones(context_s, settings):
    """What a worker commits and fans out while it is still decoding never changes later, the
    span its models read included."""
    dataset = load_dataset(TEST_DATA)
    signal, _ = join_clips([clip.path for clip in dataset.clips], seed=5, pause_s=(0.2, 1.0))
    detector = SpeechDetector(replace(settings, context_s=context_s))
    seen = []
    for start in range(0, signal.size, 3 * SAMPLE_RATE):
        detector.feed(signal[start : start + 3 * SAMPLE_RATE])
        seen.append(detector.settled())
    final = detector.segments()
    assert len(seen[-1]) < len(final) + 1 and seen[len(seen) // 2]
    for settled in seen:
        assert final[: len(settled)] == settled
        assert [s.read_span for s in final[: len(settled)]] == [s.read_span for s in settled]


@pytest.mark.parametrize("rules", [SETTINGS, FRAGMENTS], ids=["pauses", "fragments"])
@pytest.mark.parametrize("reach_back_s", [0.0, 1.0])
@pytest.mark.parametrize("context_s", [0.0, 0.5])
@pytest.mark.parametrize("seed", range(8))
def test_settled_segments_never_change_whatever_speech_follows(
    monkeypatch, seed, context_s, reach_back_s, rules
):
    """Speech, fragments, clicks and pauses of lengths either side of every limit, and onsets
    the backward pass hears up to 1.5 s early, fed in chunks of any size: no later audio changes
    a settled segment."""
    # Each frame's first sample holds the probability the detector is to give it, its last the
    # one the backward pass is to give it.
    monkeypatch.setattr(segments, "frame_probabilities", lambda y: y.reshape(-1, FRAME)[:, 0])
    monkeypatch.setattr(segments, "backward_probabilities", lambda y: y.reshape(-1, FRAME)[:, -1])
    rng = np.random.default_rng(seed)
    pieces = []
    for _ in range(40):
        pieces.append((rng.choice([0.2, 0.35, 0.6, 0.95, 1.1, 1.6, 2.5]), 0.05))
        pieces.append((rng.choice([0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 1.5, 3.0, 8.0]), 0.9))
    forward = _frames(*pieces)
    backward = forward.copy()
    onsets = np.flatnonzero((forward[1:] > 0.5) & (forward[:-1] < 0.5)) + 1
    for onset in onsets:
        heard = round(rng.choice([0.0, 0.3, 0.8, 1.5]) / FRAME_S)
        backward[max(onset - heard, 0) : onset] = 0.9
    assert forward.size == backward.size
    signal = np.concatenate(
        [np.repeat(forward[:, None], FRAME // 2, 1), np.repeat(backward[:, None], FRAME // 2, 1)],
        axis=1,
    ).reshape(-1)
    settings = replace(rules, context_s=context_s, reach_back_s=reach_back_s)
    detector = SpeechDetector(settings)
    start, seen = 0, []
    while start < signal.size:
        step = FRAME * int(rng.integers(1, 120))
        detector.feed(signal[start : start + step])
        start += step
        seen.append(detector.settled())
    final = detector.segments()
    assert final == segments_from_probabilities(forward, signal.size, settings, backward)
    if reach_back_s:  # the backward pass moved starts
        assert final != segments_from_probabilities(forward, signal.size, settings)
    for settled in seen:
        assert final[: len(settled)] == settled
        assert [s.read_span for s in final[: len(settled)]] == [s.read_span for s in settled]
    assert max(len(settled) for settled in seen) >= len(final) // 2
