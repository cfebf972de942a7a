"""Why the timeline's boundary truth is measured in the voice band: a figure of clips whose edges,
trimmed 30 dB below the peak as research.timeline_report trims them, move when the clip is
high-passed at VOICE_BAND_HZ first — each clip's spectrogram under 500 Hz beside its frame RMS
both ways.

    python -m research.timeline_truth --data ../shared/data --out docs/timeline_truth.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from research.timeline_report import SPEECH_TOP_DB, VOICE_BAND_HZ, high_passed
from ser_worker.labels import SAMPLE_RATE

# Validation actors' clips (15-17) whose 30 dB edges lay far outside the detector's segment.
CLIPS = (
    "ravdess/Actor_17/03-01-04-02-02-01-17.flac",
    "ravdess/Actor_15/03-01-06-01-02-02-15.flac",
    "ravdess/Actor_17/03-01-06-01-02-01-17.flac",
    "ravdess/Actor_15/03-01-04-01-02-02-15.flac",
)
FRAME, HOP = 2048, 512  # librosa.effects.trim's frames


def plot(paths: list[Path], out: Path) -> None:
    import librosa
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ser_worker.audio import load_audio

    fig, axes = plt.subplots(len(paths), 2, figsize=(12, 2.3 * len(paths)), squeeze=False)
    for (left, right), path in zip(axes, paths, strict=True):
        y = load_audio(path, trim=True)
        band = high_passed(y, VOICE_BAND_HZ)
        seconds = len(y) / SAMPLE_RATE
        spectrum = librosa.amplitude_to_db(
            np.abs(librosa.stft(y, n_fft=4096, hop_length=256)), ref=np.max
        )
        top = int(500 / (SAMPLE_RATE / 4096))
        left.imshow(
            spectrum[:top],
            origin="lower",
            aspect="auto",
            extent=(0, seconds, 0, top * SAMPLE_RATE / 4096),
            vmin=-80,
            cmap="magma",
        )
        for x, style, colour in ((y, "-", "cyan"), (band, "--", "lime")):
            _, (start, end) = librosa.effects.trim(x, top_db=SPEECH_TOP_DB)
            for edge in (start, end):
                left.axvline(edge / SAMPLE_RATE, color=colour, ls=style, lw=1.5)
        left.set_ylabel("Hz")
        left.set_title(f"{path.parent.name}/{path.name}: spectrogram under 500 Hz", fontsize=8)
        for x, label in ((y, "broadband"), (band, f"above {VOICE_BAND_HZ:.0f} Hz")):
            rms = librosa.feature.rms(y=x, frame_length=FRAME, hop_length=HOP)[0]
            t = np.arange(rms.size) * HOP / SAMPLE_RATE
            right.plot(t, 20 * np.log10(rms / rms.max() + 1e-9), label=label)
        right.axhline(-SPEECH_TOP_DB, color="k", lw=0.6)
        right.set_ylim(-80, 3)
        right.set_ylabel("RMS, dB re peak")
        right.set_title("frame RMS: the trim keeps frames above the line", fontsize=8)
    axes[0][0].plot([], [], color="cyan", label="30 dB edges, broadband")
    axes[0][0].plot(
        [], [], color="lime", ls="--", label=f"30 dB edges above {VOICE_BAND_HZ:.0f} Hz"
    )
    axes[0][0].legend(fontsize=7, loc="upper right")
    axes[0][1].legend(fontsize=7, loc="upper right")
    axes[-1][0].set_xlabel("s")
    axes[-1][1].set_xlabel("s")
    fig.tight_layout()
    fig.savefig(out, dpi=80)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("clips", nargs="*", default=list(CLIPS), help="paths under --data")
    args = parser.parse_args()
    plot([args.data / clip for clip in args.clips], args.out)


if __name__ == "__main__":
    main()
