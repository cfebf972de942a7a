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


def join_clips(
    paths: Sequence[Path],
    emotions: Sequence[str | None] | None = None,
    *,
    seed: int = 0,
    pause_s: tuple[float, float] = (0.5, 2.0),
    noise_rms: float = 0.002,
    repeat: int = 1,
) -> tuple[np.ndarray, list[JoinedClip]]:
    """(signal at SAMPLE_RATE, the clips in it): each clip after a pause drawn from `pause_s`,
    `repeat` passes over `paths` in a shuffled order each; a pause closes the recording."""
    from ser_worker.audio import load_audio

    rng = np.random.default_rng(seed)
    emotions = list(emotions) if emotions is not None else [None] * len(paths)
    decoded = [load_audio(path, trim=True) for path in paths]
    parts, joined, t = [], [], 0.0
    for _ in range(repeat):
        for i in rng.permutation(len(paths)):
            pause = rng.uniform(*pause_s)
            parts.append(np.zeros(int(pause * SAMPLE_RATE), np.float32))
            t += len(parts[-1]) / SAMPLE_RATE
            parts.append(decoded[i])
            duration = len(decoded[i]) / SAMPLE_RATE
            joined.append(JoinedClip(Path(paths[i]), emotions[i], t, t + duration))
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
