"""A recording's emotion timeline as a picture: each segment a band coloured by its emotion,
the confidence of that emotion as a line over it, one panel per recording."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ser_worker.labels import EMOTION_NAMES, EMOTIONS

# One fixed colour per emotion, the same in every plot (matplotlib's tab10, chosen to read apart).
EMOTION_COLOURS: dict[str, str] = {
    "ANG": "#d62728",
    "DIS": "#8c564b",
    "FEA": "#9467bd",
    "HAP": "#ff7f0e",
    "NEU": "#7f7f7f",
    "SAD": "#1f77b4",
}


def plot_timeline(
    rows: Sequence[Mapping[str, Any]],
    path: Path,
    *,
    durations: Mapping[str, float] | None = None,
    title: str | None = None,
) -> Path:
    """Write a PNG of `rows` (``ser-cli timeline`` rows of one model) to `path`.

    Overlapping windows of one speech run are drawn in order; the later window's band covers
    the overlap, as the later window's answer is the one read there.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    by_recording: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_recording.setdefault(row["recording"], []).append(row)
    # Recordings without a segment (no speech) still get their panel: their absence is news.
    names = list(dict.fromkeys([*(durations or {}), *by_recording])) or ["(no recordings)"]
    longest = max([*(durations or {}).values(), *(r["end_s"] for r in rows), 1.0])
    # Wider for longer recordings (about 20 s per inch), so segments stay apart; capped.
    width = min(max(12.0, longest / 20), 48.0)
    figure, axes = plt.subplots(
        len(names), 1, figsize=(width, 1.9 * len(names) + 0.9), squeeze=False, sharex=False
    )
    for axis, name in zip(axes[:, 0], names, strict=True):
        segments = sorted(by_recording.get(name, []), key=lambda r: r["start_s"])
        for row in segments:
            axis.axvspan(
                row["start_s"],
                row["end_s"],
                ymin=0,
                ymax=1,
                color=EMOTION_COLOURS[row["emotion"]],
                alpha=0.55,
                linewidth=0,
            )
        xs, ys = [], []
        for row in segments:
            xs += [row["start_s"], row["end_s"], float("nan")]
            ys += [row["confidence"], row["confidence"], float("nan")]
        # The confidence over time: each segment's level, joined across the pauses between them.
        axis.plot(
            [(r["start_s"] + r["end_s"]) / 2 for r in segments],
            [r["confidence"] for r in segments],
            color="black",
            linewidth=0.6,
            alpha=0.5,
        )
        axis.plot(xs, ys, color="black", linewidth=1.4)
        if not segments:
            axis.text(0.5, 0.5, "no speech found", transform=axis.transAxes, ha="center")
        end = (durations or {}).get(name) or max((r["end_s"] for r in segments), default=1.0)
        axis.set_xlim(0, end)
        axis.set_ylim(0, 1.02)
        axis.set_ylabel("confidence")
        model = segments[0]["model"] if segments else ""
        axis.set_title(f"{name}  ({model}, {len(segments)} segments)", fontsize=9, loc="left")
        axis.grid(axis="y", alpha=0.3)
    axes[-1, 0].set_xlabel("time (s)")
    legend = [Patch(color=EMOTION_COLOURS[e], alpha=0.55, label=EMOTION_NAMES[e]) for e in EMOTIONS]
    figure.legend(handles=legend, loc="upper right", ncol=len(EMOTIONS), fontsize=8, frameon=False)
    if title:
        figure.suptitle(title, x=0.01, ha="left", fontsize=10)
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
