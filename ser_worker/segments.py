"""Speech segments of a long recording: where someone speaks, cut to what the models can read.

A voice-activity detector (Silero VAD, the ONNX file the ``faster-whisper`` package ships, run on
onnxruntime) gives a speech probability per 32 ms frame; frames above the threshold are speech,
and a run ends only where the probability stays below a lower one (hysteresis) for at least
``min_silence_s``: the short pauses inside a sentence do not split it. Nor does a longer pause
(up to ``fragment_pause_s``) next to a run shorter than ``fragment_s``: a word broken off a
sentence stays with it rather than becoming a segment too short to read emotion from. Silero
hears some onsets late (loud, strongly voiced ones above all); heard backwards, from the speech
into the pause before it, the same onset is often heard in time, so with ``reach_back_s`` set
the start a timeline reports reaches back over the frames the backward pass calls speech. What
the models read stays the forward pass's span: reading the reached-back audio cost segment
accuracy on validation actors (docs/RESULTS.md, "Timelines"). A run longer than the
models' window is cut into overlapping windows, so no segment is longer than what the members
were trained to read and no speech falls between two windows.

The probabilities can be computed a chunk at a time (``SpeechDetector``), so a recording of hours
is never held whole in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ser_worker.config import Settings, get_settings
from ser_worker.labels import SAMPLE_RATE

# Silero VAD's frame at 16 kHz: it scores 512 samples at a time.
FRAME = 512
FRAME_S = FRAME / SAMPLE_RATE

# A speech run: (start_s, end_s, where the forward pass heard it start); the start reaches back
# over what the backward pass hears, what the models read begins at the forward start.
Run = tuple[float, float, float]


@dataclass(frozen=True)
class SegmentSettings:
    threshold: float
    min_silence_s: float
    window_s: float
    overlap_s: float
    # Shorter runs are not speech a model can read (the clip minimum after trimming).
    min_speech_s: float
    # Each segment keeps this much audio around its run: the detector reacts a frame or two late.
    pad_s: float = 0.1
    # What the models read reaches this much further (Segment.context): the members learnt from
    # clips with their lead-in and trailing silence, and read a segment cut tight to the speech
    # as a different kind of input (docs/RESULTS.md, "Timelines").
    context_s: float = 0.0
    # A pause shorter than fragment_pause_s does not split where the speech on either side of it
    # is shorter than fragment_s (0: off). Actors break a word off a sentence for 0.5-0.8 s,
    # longer than the pauses between some sentences (docs/RESULTS.md, "Timelines").
    fragment_s: float = 0.0
    fragment_pause_s: float = 0.0
    # How far a run's start may reach back over frames the backward pass hears as speech (0: no
    # backward pass). The onsets Silero hears late lie up to about a second in
    # (docs/RESULTS.md, "Timelines").
    reach_back_s: float = 0.0

    @property
    def horizon_s(self) -> float:
        """How far after a run later audio can still join something to it."""
        if not self.fragment_s:
            return self.min_silence_s + self.reach_back_s
        # The next run starts within fragment_pause_s (plus what its start reaches back);
        # whether it is a blip, a fragment or longer is known once that much of it is heard, or
        # once it has ended for min_silence_s.
        return (
            self.fragment_pause_s
            + self.reach_back_s
            + max(self.fragment_s, self.min_speech_s)
            + self.min_silence_s
        )

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> SegmentSettings:
        settings = settings or get_settings()
        return cls(
            threshold=settings.vad_threshold,
            min_silence_s=settings.vad_min_silence_s,
            window_s=settings.segment_window_s,
            overlap_s=min(settings.segment_overlap_s, settings.segment_window_s / 2),
            min_speech_s=settings.min_duration_s,
            context_s=settings.segment_context_s,
            fragment_s=settings.vad_fragment_s,
            fragment_pause_s=settings.vad_fragment_pause_s,
            reach_back_s=settings.vad_reach_back_s,
        )


@dataclass(frozen=True)
class Segment:
    """Where speech was found (start_s, end_s: what a timeline reports), and the span of the
    recording the models read for it (`context`; the same span where None)."""

    start_s: float
    end_s: float
    context: tuple[float, float] | None = field(default=None, compare=False)

    @property
    def read_span(self) -> tuple[float, float]:
        return self.context or (self.start_s, self.end_s)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@lru_cache(maxsize=1)
def _vad_model():
    from faster_whisper.vad import get_vad_model

    return get_vad_model()


def frame_probabilities(signal: np.ndarray) -> np.ndarray:
    """Silero's speech probability of each FRAME of `signal` (16 kHz); the last frame padded."""
    y = np.asarray(signal, dtype=np.float32)
    if y.size == 0:
        return np.zeros(0, np.float32)
    padded = np.pad(y, (0, -y.size % FRAME))
    return np.asarray(_vad_model()(padded), dtype=np.float32).reshape(-1)


def backward_probabilities(signal: np.ndarray) -> np.ndarray:
    """Silero's speech probability of each FRAME of `signal`, heard backwards (the signal
    reversed, then the probabilities put back in time order): the same frames as
    ``frame_probabilities``."""
    y = np.asarray(signal, dtype=np.float32)
    padded = np.pad(y, (0, -y.size % FRAME))
    return frame_probabilities(padded[::-1])[::-1].copy()


@dataclass
class SpeechDetector:
    """Speech probabilities of a recording fed a chunk at a time (any chunk sizes); each chunk
    is also heard backwards when the settings reach back."""

    settings: SegmentSettings
    _probabilities: list[np.ndarray] = field(default_factory=list)
    _backward: list[np.ndarray] = field(default_factory=list)
    _carry: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    n_samples: int = 0

    def feed(self, chunk: np.ndarray) -> None:
        y = np.concatenate([self._carry, np.asarray(chunk, dtype=np.float32)])
        whole = y.size - y.size % FRAME
        if whole:
            self._probabilities.append(frame_probabilities(y[:whole]))
            if self.settings.reach_back_s:
                self._backward.append(backward_probabilities(y[:whole]))
        self._carry = y[whole:]
        self.n_samples += len(chunk)

    def _heard(self, tail: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """(forward, backward or None) probabilities of what was fed, with the unfinished last
        frame when `tail`."""
        forward, backward = list(self._probabilities), list(self._backward)
        if tail and self._carry.size:
            forward.append(frame_probabilities(self._carry))
            if self.settings.reach_back_s:
                backward.append(backward_probabilities(self._carry))
        empty = np.zeros(0, np.float32)
        joined = np.concatenate(forward) if forward else empty
        if not self.settings.reach_back_s:
            return joined, None
        return joined, np.concatenate(backward) if backward else empty

    def segments(self) -> list[Segment]:
        forward, backward = self._heard(tail=True)
        return segments_from_probabilities(forward, self.n_samples, self.settings, backward)

    def settled(self) -> list[Segment]:
        """The segments no later audio can change, in order: a prefix of what ``segments`` will
        return once the whole recording is fed. A speech run is settled once more than a pause,
        both pads and a frame lie after it (a run still going may yet grow, and so re-window); the
        pause is ``horizon_s``, which a fragment can bridge."""
        if not self._probabilities:
            return []
        probabilities, backward = self._heard(tail=False)
        fed_s = probabilities.size * FRAME_S
        found = segments_from_probabilities(
            probabilities, probabilities.size * FRAME, self.settings, backward
        )
        reach = self.settings.pad_s + max(self.settings.pad_s, self.settings.context_s)
        cutoff = fed_s - (self.settings.horizon_s + 2 * reach + 2 * FRAME_S)
        # Windows of one run touch or overlap each other: a run is the chain they form.
        keep = len(found)
        while keep and found[keep - 1].end_s >= cutoff:
            keep -= 1
            while keep and found[keep - 1].end_s >= found[keep].start_s:
                keep -= 1
        return found[:keep]


def speech_segments(
    signal: np.ndarray, sampling_rate: int, settings: Settings | SegmentSettings | None = None
) -> list[Segment]:
    """The speech segments of a whole signal (mono, any rate), in time order."""
    from ser_worker.audio import resample

    if not isinstance(settings, SegmentSettings):
        settings = SegmentSettings.from_settings(settings)
    y = resample(np.asarray(signal, dtype=np.float32), sampling_rate)
    detector = SpeechDetector(settings)
    detector.feed(y)
    return detector.segments()


def segments_from_probabilities(
    probabilities: np.ndarray,
    n_samples: int,
    settings: SegmentSettings,
    backward: np.ndarray | None = None,
) -> list[Segment]:
    """Speech runs (hysteresis, starts reaching back over what `backward` hears, short pauses
    bridged, padded), then windows of the long ones, each with the span its models read
    (`Segment.context`): that span starts where the forward pass heard the run start."""
    duration_s = n_samples / SAMPLE_RATE
    runs = [(start, end, start) for start, end in _speech_runs(probabilities, settings)]
    if backward is not None and settings.reach_back_s:
        runs = _reach_back(runs, backward, settings)
    runs = _bridge(runs, settings)
    shown = _pad([(start, end) for start, end, _ in runs], settings.pad_s, duration_s)
    read = _pad([(heard, end) for _, end, heard in runs], settings.pad_s, duration_s)
    segments: list[Segment] = []
    for (first, last), (start, end), (before, after) in zip(
        shown, read, _pad(read, settings.context_s, duration_s), strict=True
    ):
        windows = _windows(start, end, settings)
        shown_edges = _outer_edges(windows, first, last)
        read_edges = _outer_edges(windows, before, after)
        segments.extend(
            Segment(a, b, (c, d)) for (a, b), (c, d) in zip(shown_edges, read_edges, strict=True)
        )
    return segments


def _outer_edges(windows: list[Segment], first_s: float, last_s: float) -> list[list[float]]:
    """The windows' [start, end], the first's start and the last's end moved to the run's own
    edges: its inner windows' edges lie in speech that the neighbouring window reads."""
    edges = [[w.start_s, w.end_s] for w in windows]
    edges[0][0], edges[-1][1] = round(first_s, 3), round(last_s, 3)
    return edges


def _speech_runs(probabilities: np.ndarray, settings: SegmentSettings) -> list[tuple[float, float]]:
    """(start_s, end_s) of each run: it starts above the threshold and lasts while above the lower
    one, as Silero's own segmentation does."""
    low = max(settings.threshold - 0.15, 0.01)
    runs, start = [], None
    for i, p in enumerate(probabilities):
        if start is None and p >= settings.threshold:
            start = i
        elif start is not None and p < low:
            runs.append((start * FRAME_S, i * FRAME_S))
            start = None
    if start is not None:
        runs.append((start * FRAME_S, len(probabilities) * FRAME_S))
    return runs


def _reach_back(runs: list[Run], backward: np.ndarray, settings: SegmentSettings) -> list[Run]:
    """Each run's start moved back over the frames just before it that the backward pass hears
    as speech (above the threshold), at most reach_back_s and never into the run before; where
    the forward pass heard it start is kept."""
    reached, previous_end = [], 0.0
    limit = int(round(settings.reach_back_s / FRAME_S))
    for start_s, end_s, heard_s in runs:
        start = round(start_s / FRAME_S)
        floor = max(start - limit, round(previous_end / FRAME_S))
        while start > floor and backward[start - 1] >= settings.threshold:
            start -= 1
        reached.append((start * FRAME_S, end_s, heard_s))
        previous_end = end_s
    return reached


def _bridge(runs: list[Run], settings: SegmentSettings) -> list[Run]:
    """Runs joined across short pauses; blips too short to be a clip dropped (a click is not a
    fragment of speech); then runs joined across the longer pauses next to a fragment. Each pause
    is judged by the two runs beside it alone, so later audio changes only the runs near it
    (SpeechDetector.settled)."""

    def short_pause(before: Run, after: Run) -> bool:
        return after[0] - before[1] < settings.min_silence_s

    def beside_a_fragment(before: Run, after: Run) -> bool:
        shortest = min(before[1] - before[0], after[1] - after[0])
        return after[0] - before[1] < settings.fragment_pause_s and shortest < settings.fragment_s

    runs = _join(runs, short_pause)
    runs = [run for run in runs if run[1] - run[0] >= settings.min_speech_s]
    return _join(runs, beside_a_fragment)


def _join(runs: list[Run], joined) -> list[Run]:
    """Consecutive runs merged wherever joined(run, next run) holds."""
    merged: list[Run] = []
    for i, run in enumerate(runs):
        if merged and joined(runs[i - 1], run):
            merged[-1] = (merged[-1][0], run[1], merged[-1][2])
        else:
            merged.append(run)
    return merged


def _pad(runs: list[tuple[float, float]], pad_s: float, duration_s: float):
    """Each run widened by pad_s, never past the recording or half-way into a neighbour's gap."""
    padded = []
    for i, (start, end) in enumerate(runs):
        before = (start - runs[i - 1][1]) / 2 if i else start
        after = (runs[i + 1][0] - end) / 2 if i + 1 < len(runs) else duration_s - end
        padded.append((start - min(pad_s, before), min(end + min(pad_s, after), duration_s)))
    return padded


def _windows(start: float, end: float, settings: SegmentSettings) -> list[Segment]:
    """One segment, or overlapping windows of window_s whose last one ends with the run."""
    if end - start <= settings.window_s:
        return [Segment(round(start, 3), round(end, 3))]
    hop = settings.window_s - settings.overlap_s
    count = int(np.ceil((end - start - settings.window_s) / hop)) + 1
    hop = (end - start - settings.window_s) / (count - 1)  # spread evenly: overlap >= overlap_s
    return [
        Segment(round(start + k * hop, 3), round(start + k * hop + settings.window_s, 3))
        for k in range(count)
    ]
