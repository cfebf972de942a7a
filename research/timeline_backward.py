"""Why the timeline's detector also hears each chunk backwards, and where that is not enough: a
figure of dev actors' recordings (built as research.timeline_report builds them, noise 30 dB
below) with Silero's speech probability heard forwards and backwards, the voice's true span and
the segments found without and with the backward pass.

- Top: dev clips whose start the backward pass moved to the voice (the largest such moves on the
  dev recordings);
- bottom: dev actor 06's strongly angry renditions joined into one recording, which Silero hears
  poorly both ways.

    python -m research.timeline_backward --data ../shared/data --out docs/timeline_backward.png
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.recordings import join_clips
from research.timeline_report import (
    CLIPS_PER_RECORDING,
    VOICE_BAND_HZ,
    match,
    pick_clips,
    speech_edges,
)
from ser_worker.labels import SAMPLE_RATE

DEV = frozenset(f"ravdess:{actor:02d}" for actor in range(1, 15))
# Dev actor 06's strongly angry renditions (RAVDESS emotion 05, intensity 02).
SHOUTED = tuple(f"ravdess/Actor_06/03-01-05-02-0{s}-0{r}-06.flac" for s in (1, 2) for r in (1, 2))
SHOWN = 3
# The reach measured in docs/RESULTS.md ("Silero heard backwards"), the shipped default too; set
# here so that a SER_VAD_REACH_BACK_S in the environment does not change the figure.
REACH_BACK_S = 1.0


def heard(signal: np.ndarray, settings):
    """(forward, backward) probabilities and the segments without and with the backward pass."""
    from ser_worker import segments

    forward = segments.frame_probabilities(signal)
    backward = segments.backward_probabilities(signal)
    plain = segments.segments_from_probabilities(
        forward, signal.size, replace(settings, reach_back_s=0.0)
    )
    reaching = segments.segments_from_probabilities(forward, signal.size, settings, backward)
    return forward, backward, plain, reaching


def moved_starts(data: Path, settings) -> list[tuple]:
    """Dev clips whose start error (voice band) the backward pass brought from over 0.3 s to
    within it, largest move first: (signal, clip, voice span, heard)."""
    clips = pick_clips(data, 600, 0, DEV)  # the dev draw of docs/RESULTS.md's tables
    found = []
    for i in range(0, len(clips), CLIPS_PER_RECORDING):
        part = clips[i : i + CLIPS_PER_RECORDING]
        signal, joined = join_clips(
            [c.path for c in part], [c.emotion for c in part], seed=i, snr_db=30.0
        )
        result = heard(signal, settings)
        edges = speech_edges(joined, VOICE_BAND_HZ)
        before, after = match(joined, result[2]), match(joined, result[3])
        for clip, b, a in zip(joined, before, after, strict=True):
            if not (b["one_segment"] and a["one_segment"]):
                continue
            onset = clip.start_s + edges[clip.path][0]
            late, now = b["hits"][0].start_s - onset, a["hits"][0].start_s - onset
            if late > 0.3 >= abs(now):
                span = (onset, clip.end_s - edges[clip.path][1])
                found.append((late - now, signal, clip, span, result))
    found.sort(key=lambda row: -row[0])
    return [row[1:] for row in found[:SHOWN]]


def draw(axis, signal, t0, t1, spans, result, settings, title) -> None:
    from ser_worker.segments import FRAME_S

    forward, backward, plain, reaching = result
    t = (np.arange(forward.size) + 0.5) * FRAME_S
    keep = (t >= t0) & (t <= t1)
    time = np.arange(signal.size) / SAMPLE_RATE
    inside = (time >= t0) & (time <= t1)
    scale = np.abs(signal[inside]).max() or 1.0
    axis.plot(time[inside][::4], 0.5 + 0.45 * signal[inside][::4] / scale, color="0.75", lw=0.4)
    for start, end in spans:
        axis.axvspan(start, end, color="tab:green", alpha=0.12)
    axis.plot(t[keep], forward[keep], color="tab:blue", lw=1.0, label="Silero, forwards")
    axis.plot(t[keep], backward[keep], color="tab:orange", lw=1.0, label="Silero, backwards")
    axis.axhline(settings.threshold, color="k", ls=":", lw=0.8, label="threshold")
    for row, (segs, colour) in enumerate(((plain, "tab:blue"), (reaching, "tab:orange"))):
        for s in segs:
            if s.end_s > t0 and s.start_s < t1:
                a, b = max(s.start_s, t0), min(s.end_s, t1)
                axis.plot(
                    [a, b], [-0.12 - 0.1 * row] * 2, color=colour, lw=5, solid_capstyle="butt"
                )
    axis.set_xlim(t0, t1)
    axis.set_ylim(-0.3, 1.05)
    axis.set_title(title, fontsize=9)


def plot(data: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ser_worker.segments import SegmentSettings

    settings = replace(SegmentSettings.from_settings(), reach_back_s=REACH_BACK_S)
    moved = moved_starts(data, settings)
    fig = plt.figure(figsize=(13, 7))
    grid = fig.add_gridspec(2, max(len(moved), 1))
    for k, (signal, clip, span, result) in enumerate(moved):
        axis = fig.add_subplot(grid[0, k])
        draw(
            axis,
            signal,
            span[0] - 1.0,
            span[1] + 0.5,
            [span],
            result,
            settings,
            f"{clip.path.name} ({clip.emotion})",
        )
        axis.set_ylabel("speech probability" if k == 0 else "")
    signal, joined = join_clips([data / clip for clip in SHOUTED], seed=0, snr_db=30.0)
    edges = speech_edges(joined, VOICE_BAND_HZ)
    spans = [(c.start_s + edges[c.path][0], c.end_s - edges[c.path][1]) for c in joined]
    axis = fig.add_subplot(grid[1, :])
    draw(
        axis,
        signal,
        0.0,
        signal.size / SAMPLE_RATE,
        spans,
        heard(signal, settings),
        settings,
        "dev actor 06, four strongly angry renditions joined: heard poorly both ways",
    )
    axis.set_ylabel("speech probability")
    axis.set_xlabel(
        "seconds · green: the voice (above 80 Hz, trimmed 30 dB below its peak) · grey: the "
        "waveform · bars: segments, forwards only (blue) and with the backward pass (orange)"
    )
    axis.legend(loc="upper right", fontsize=8, ncol=3)
    fig.suptitle("Segment starts reach back over what Silero hears backwards")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("docs/timeline_backward.png"))
    args = parser.parse_args()
    plot(args.data, args.out)


if __name__ == "__main__":
    main()
