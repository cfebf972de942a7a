"""Long recordings made from real labelled clips, for the timeline's tests, figures and benchmark:
clips (edge silence trimmed as the CNNs read them) joined with random pauses over low background
noise, with where each clip lies and its true emotion."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ser_worker.labels import SAMPLE_RATE


@dataclass(frozen=True)
class JoinedClip:
    path: Path
    emotion: str | None
    start_s: float
    end_s: float
    # The clip's mean power over the recording's background noise.
    snr_db: float = float("inf")


def join_clips(
    paths: Sequence[Path],
    emotions: Sequence[str | None] | None = None,
    *,
    seed: int = 0,
    pause_s: tuple[float, float] = (0.5, 2.0),
    noise_rms: float = 0.002,
    snr_db: float | None = None,
    repeat: int = 1,
) -> tuple[np.ndarray, list[JoinedClip]]:
    """(signal at SAMPLE_RATE, the clips in it): each clip after a pause drawn from `pause_s`,
    `repeat` passes over `paths` in a shuffled order each; a pause closes the recording.

    The background noise is white, at `noise_rms`, or, with `snr_db`, that far below the
    recording's speech: the median of its clips' mean power (channel.mix_at_snr's measure), so
    one noise floor lies under clips as loud and as quiet as they were recorded. A fixed level
    is a different SNR on every corpus: 0.002 lies 2-37 dB (5th-95th percentile) below RAVDESS
    actors 18-20's clips (docs/RESULTS.md, "Timelines")."""
    from ser_worker.audio import load_audio

    rng = np.random.default_rng(seed)
    emotions = list(emotions) if emotions is not None else [None] * len(paths)
    decoded = [load_audio(path, trim=True) for path in paths]
    powers = [float(np.mean(np.square(y, dtype=np.float64))) for y in decoded]
    if snr_db is not None:
        noise_rms = float(np.sqrt(np.median(powers) / 10.0 ** (snr_db / 10.0)))
    parts, joined, t = [], [], 0.0
    for _ in range(repeat):
        for i in rng.permutation(len(paths)):
            pause = rng.uniform(*pause_s)
            parts.append(np.zeros(int(pause * SAMPLE_RATE), np.float32))
            t += len(parts[-1]) / SAMPLE_RATE
            parts.append(decoded[i])
            duration = len(decoded[i]) / SAMPLE_RATE
            snr = 10 * np.log10(powers[i] / noise_rms**2) if noise_rms > 0 else float("inf")
            joined.append(JoinedClip(Path(paths[i]), emotions[i], t, t + duration, float(snr)))
            t += duration
    parts.append(np.zeros(int(pause_s[1] * SAMPLE_RATE), np.float32))
    signal = np.concatenate(parts)
    signal += rng.normal(0.0, noise_rms, signal.size).astype(np.float32)
    return signal, joined


def silence(seconds: float, *, seed: int = 0, noise_rms: float = 0.002) -> np.ndarray:
    """Low background noise and nothing else: a recording with no speech."""
    rng = np.random.default_rng(seed)
    return rng.normal(0.0, noise_rms, int(seconds * SAMPLE_RATE)).astype(np.float32)


def wav_bytes(signal: np.ndarray, path: Path | None = None) -> bytes:
    """16-bit PCM WAV at SAMPLE_RATE (written to `path` too when given)."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(signal, -1, 1), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    if path is not None:
        path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def main() -> None:
    """``python -m benchmarks.recordings OUT.wav --data DIR --clips N``: a recording to try."""
    import argparse

    from ser_worker.datasets import load_dataset

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=Path("tests/data"))
    parser.add_argument("--clips", type=int, default=36)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    clips = load_dataset(args.data).clips
    rng = np.random.default_rng(args.seed)
    chosen = [clips[i] for i in rng.choice(len(clips), min(args.clips, len(clips)), replace=False)]
    signal, joined = join_clips(
        [c.path for c in chosen], [c.emotion for c in chosen], seed=args.seed
    )
    wav_bytes(signal, args.out)
    for clip in joined:
        print(f"{clip.start_s:8.2f} {clip.end_s:8.2f} {clip.emotion} {clip.path.name}")
    print(f"{signal.size / SAMPLE_RATE:.1f} s written to {args.out}")


if __name__ == "__main__":
    main()
