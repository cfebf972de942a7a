"""Features of a whole corpus, with augmented copies, in one compressed file.

A bank lets the report's runs skip audio decoding, feature extraction and augmentation (the
CPU-heavy parts), and lets them run on a machine that has no copy of the corpora, e.g. a GPU
machine that takes only a small upload:

    python -m research.feature_bank build --data ../shared/data --copies 1 --out bank.npz

The log-mel (dB relative to the clip's peak, clipped at -80 by librosa) is stored as uint8
steps of 80/255 dB (a rounding error of at most half a step); ZCR and energy stay float32. Raw
features are stored, so one bank serves every FeatureSettings that shares its sample rate,
framing and bands (window lengths and per-clip normalisation are applied when features are
read).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ser_worker.audio import load_audio
from ser_worker.datasets import LabelledClip
from ser_worker.features.augment import augment
from ser_worker.features.study import ClipFeatures, FeatureSettings, extract, per_clip_normalised

TOP_DB = 80.0  # librosa.power_to_db's default floor below the peak
STEPS = 255
# The fields that decide the stored features; the others only shape the model inputs.
EXTRACTION_FIELDS = ("sample_rate", "frame_length", "hop_length", "n_mels")


def quantise_mel(mel_db: np.ndarray) -> np.ndarray:
    return np.clip(np.round(-mel_db * (STEPS / TOP_DB)), 0, STEPS).astype(np.uint8)


def dequantise_mel(steps: np.ndarray) -> np.ndarray:
    return steps.astype(np.float32) * np.float32(-TOP_DB / STEPS)


@dataclass
class FeatureBank:
    """Item r holds the frames offsets[r]:offsets[r + 1]; originals first, then copies."""

    clips: list[LabelledClip]
    settings: FeatureSettings
    copies: int
    copied: tuple[int, ...]  # the clips that have augmented copies, in storage order
    mel: np.ndarray  # uint8 (n_mels, frames of every item)
    zcr: np.ndarray
    energy: np.ndarray
    offsets: np.ndarray

    def original(self, clip: int, settings: FeatureSettings) -> ClipFeatures:
        return self._item(clip, settings)

    def copy(self, number: int, clip: int, settings: FeatureSettings) -> ClipFeatures:
        """Augmented copy `number` (0-based) of a clip, as `extract` gives it under `settings`."""
        if not 0 <= number < self.copies:
            raise ValueError(f"the bank holds {self.copies} copies, asked for copy {number}")
        position = self._copy_position.get(clip)
        if position is None:
            raise ValueError(f"the bank holds no augmented copies of clip {clip}")
        return self._item(len(self.clips) + number * len(self.copied) + position, settings)

    @cached_property
    def _copy_position(self) -> dict[int, int]:
        return {clip: position for position, clip in enumerate(self.copied)}

    def _item(self, row: int, settings: FeatureSettings) -> ClipFeatures:
        for name in EXTRACTION_FIELDS:
            if getattr(settings, name) != getattr(self.settings, name):
                raise ValueError(
                    f"the bank was extracted with {name}={getattr(self.settings, name)}, "
                    f"the run asks for {getattr(settings, name)}"
                )
        frames = slice(int(self.offsets[row]), int(self.offsets[row + 1]))
        raw = ClipFeatures(
            zcr=self.zcr[frames],
            energy=self.energy[frames],
            mel_db=dequantise_mel(self.mel[:, frames]),
        )
        return per_clip_normalised(raw, settings)


def build(
    clips: list[LabelledClip],
    data_root: Path,
    out: Path,
    *,
    copies: int,
    copied: list[int],
    settings: FeatureSettings,
    seed: int,
) -> None:
    """Extract originals of `clips` and `copies` augmented copies of the clips in `copied`.

    Copy k of clip i (its position in `clips`) is drawn from a Generator seeded with
    (seed, k, i), so it does not depend on which other clips get copies or in what order.
    """
    raw = FeatureSettings(**{name: getattr(settings, name) for name in EXTRACTION_FIELDS})
    items: list[ClipFeatures] = []
    waveforms = {}
    for i, clip in enumerate(clips):
        waveforms[i] = load_audio(clip.path)
        items.append(extract(waveforms[i], raw))
    for number in range(copies):
        for i in copied:
            rng = np.random.default_rng((seed, number, i))
            augmented, _kind = augment(waveforms[i], rng, sample_rate=raw.sample_rate)
            items.append(extract(augmented, raw))
    lengths = [item.n_frames for item in items]
    meta = {
        "settings": raw.to_dict(),
        "copies": copies,
        "copied": list(copied),
        "seed": seed,
        "clips": [
            {
                "path": str(clip.path.relative_to(data_root)),
                "emotion": clip.emotion,
                "speaker": clip.speaker,
                "corpus": clip.corpus,
            }
            for clip in clips
        ],
    }
    np.savez_compressed(
        out,
        meta=np.array(json.dumps(meta)),
        mel=quantise_mel(np.concatenate([item.mel_db for item in items], axis=1)),
        zcr=np.concatenate([item.zcr for item in items]),
        energy=np.concatenate([item.energy for item in items]),
        offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
    )


def load(path: Path, data_root: Path = Path(".")) -> FeatureBank:
    with np.load(path) as stored:
        meta = json.loads(str(stored["meta"]))
        return FeatureBank(
            clips=[
                LabelledClip(
                    path=data_root / clip["path"],
                    emotion=clip["emotion"],
                    speaker=clip["speaker"],
                    corpus=clip["corpus"],
                )
                for clip in meta["clips"]
            ],
            settings=FeatureSettings.from_dict(meta["settings"]),
            copies=meta["copies"],
            copied=tuple(meta["copied"]),
            mel=stored["mel"],
            zcr=stored["zcr"],
            energy=stored["energy"],
            offsets=stored["offsets"],
        )


def main() -> None:
    from ser_worker.datasets import load_dataset, tess_thinned_out

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(required=True)
    build_parser = sub.add_parser("build", help="extract a bank from RAVDESS and TESS")
    build_parser.add_argument("--data", type=Path, required=True)
    build_parser.add_argument("--out", type=Path, required=True)
    build_parser.add_argument("--copies", type=int, default=1)
    build_parser.add_argument(
        "--tess-every",
        type=int,
        default=1,
        help="keep every n-th TESS clip of each speaker and emotion (smaller banks)",
    )
    build_parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ravdess = load_dataset(args.data / "ravdess").clips
    tess = load_dataset(args.data / "tess").clips
    left_out = tess_thinned_out(tess, args.tess_every)
    tess = [clip for i, clip in enumerate(tess) if i not in left_out]
    clips = ravdess + tess
    build(
        clips,
        args.data,
        args.out,
        copies=args.copies,
        copied=list(range(len(clips))),
        settings=FeatureSettings(),
        seed=args.seed,
    )
    print(f"{args.out}: {len(clips)} clips, {args.copies} copies, {args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
