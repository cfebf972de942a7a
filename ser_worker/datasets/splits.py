"""Train/validation/test splits of a clip list: the study's clip-level random split, and the
speaker-independent split and folds that measure accuracy on unheard speakers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ser_worker.datasets.corpus import LabelledClip


@dataclass(frozen=True)
class Split:
    """Indices into the clip list the split was made from."""

    train: tuple[int, ...]
    val: tuple[int, ...]
    test: tuple[int, ...]
    protocol: str
    description: str
    seed: int | None = None
    train_speakers: tuple[str, ...] = ()
    val_speakers: tuple[str, ...] = ()
    test_speakers: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "description": self.description,
            "seed": self.seed,
            "sizes": {"train": len(self.train), "val": len(self.val), "test": len(self.test)},
            "train_speakers": list(self.train_speakers),
            "val_speakers": list(self.val_speakers),
            "test_speakers": list(self.test_speakers),
        }


def _check_fractions(test_fraction: float, val_fraction: float) -> None:
    if not (0 <= test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise ValueError(
            "need 0 <= test_fraction, 0 <= val_fraction and test_fraction + val_fraction < 1; "
            f"got {test_fraction} and {val_fraction}"
        )


def _stratified_take(
    indices: Iterable[int],
    clips: Sequence[LabelledClip],
    fraction: float,
    rng: np.random.Generator,
) -> tuple[list[int], list[int]]:
    """Take `fraction` of each emotion's clips (rounded per emotion); return (taken, rest)."""
    by_emotion: dict[str, list[int]] = {}
    for index in sorted(indices):
        by_emotion.setdefault(clips[index].emotion, []).append(index)
    taken: list[int] = []
    rest: list[int] = []
    for emotion in sorted(by_emotion):
        members = by_emotion[emotion]
        order = rng.permutation(len(members))
        count = round(len(members) * fraction)
        taken.extend(members[i] for i in order[:count])
        rest.extend(members[i] for i in order[count:])
    return taken, rest


def _indices(indices: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted(indices))


def random_split(
    clips: Sequence[LabelledClip],
    *,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Split:
    """Clip-level split stratified by emotion; fractions are of all clips.

    This is the study's protocol: the same speakers appear in train, val and test.
    """
    if not clips:
        raise ValueError("cannot split an empty clip list")
    _check_fractions(test_fraction, val_fraction)
    rng = np.random.default_rng(seed)
    test, rest = _stratified_take(range(len(clips)), clips, test_fraction, rng)
    val, train = _stratified_take(rest, clips, val_fraction / (1 - test_fraction), rng)
    description = (
        f"clip-level random split stratified by emotion (seed {seed}): "
        f"{len(train)} train / {len(val)} val / {len(test)} test clips; the same speakers "
        "are on every side, so scores overstate accuracy on unseen speakers"
    )
    return Split(_indices(train), _indices(val), _indices(test), "random", description, seed)


def _speakers(clips: Sequence[LabelledClip]) -> list[str]:
    unknown = sum(clip.speaker is None for clip in clips)
    if unknown:
        raise ValueError(
            f"a speaker split needs the speaker of every clip, and {unknown} of {len(clips)} "
            "clips have none; use random_split, or a CSV with a speaker column"
        )
    speakers = sorted({clip.speaker for clip in clips if clip.speaker is not None})
    if len(speakers) < 2:
        raise ValueError(f"a speaker split needs at least 2 speakers; found {len(speakers)}")
    return speakers


def speaker_split(
    clips: Sequence[LabelledClip],
    *,
    test_speakers: Iterable[str] | None = None,
    test_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Split:
    """Speaker-independent split: no speaker is on both sides of train and test.

    Without `test_speakers`, round(test_fraction * speakers) of them (at least one) are drawn
    for test. Validation speakers are drawn from the training speakers when at least 3 remain;
    otherwise validation is a stratified clip-level carve from the training clips, and the
    description says so because those validation scores are then optimistic.
    """
    if not clips:
        raise ValueError("cannot split an empty clip list")
    _check_fractions(test_fraction, val_fraction)
    speakers = _speakers(clips)
    rng = np.random.default_rng(seed)
    if test_speakers is None:
        count = min(max(1, round(len(speakers) * test_fraction)), len(speakers) - 1)
        chosen = [speakers[i] for i in rng.permutation(len(speakers))[:count]]
    else:
        chosen = sorted(set(test_speakers))
        unknown = sorted(set(chosen) - set(speakers))
        if unknown:
            raise ValueError(f"test speakers not in the clips: {', '.join(unknown)}")
        if not chosen or len(chosen) == len(speakers):
            raise ValueError("test speakers must be some, but not all, of the speakers")
    test_set = set(chosen)
    remaining = [speaker for speaker in speakers if speaker not in test_set]

    test = [i for i, clip in enumerate(clips) if clip.speaker in test_set]
    train_pool = [i for i, clip in enumerate(clips) if clip.speaker not in test_set]
    val_set: set[str] = set()
    if val_fraction == 0:
        val: list[int] = []
        train = train_pool
        val_note = "no validation set"
    elif len(remaining) >= 3:
        count = min(max(1, round(len(speakers) * val_fraction)), len(remaining) - 1)
        val_set = {remaining[i] for i in rng.permutation(len(remaining))[:count]}
        val = [i for i in train_pool if clips[i].speaker in val_set]
        train = [i for i in train_pool if clips[i].speaker not in val_set]
        val_note = f"validation speakers {', '.join(sorted(val_set))}"
    else:
        share = val_fraction * len(clips) / len(train_pool)
        if share >= 1:
            raise ValueError(f"val_fraction {val_fraction} leaves no training clips")
        val, train = _stratified_take(train_pool, clips, share, rng)
        val_note = (
            f"validation is a stratified clip-level carve from the {len(remaining)} training "
            "speaker(s), too few to hold speakers out, so validation scores are optimistic"
        )
    train_speakers = tuple(s for s in remaining if s not in val_set)
    description = (
        f"speaker-independent split (seed {seed}): test speakers {', '.join(sorted(chosen))}; "
        f"{val_note}; {len(train)} train / {len(val)} val / {len(test)} test clips"
    )
    return Split(
        _indices(train),
        _indices(val),
        _indices(test),
        "speaker",
        description,
        seed,
        train_speakers,
        tuple(sorted(val_set)),
        tuple(sorted(chosen)),
    )


def speaker_folds(
    clips: Sequence[LabelledClip],
    n_folds: int = 5,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> list[Split]:
    """Speaker-grouped cross-validation: each speaker is a test speaker in exactly one fold.

    Speakers are shuffled and dealt into `n_folds` groups of near-equal size (RAVDESS: 20
    actors, 5 folds of 4); each fold's validation follows the `speaker_split` rule.
    """
    speakers = _speakers(clips)
    if not 2 <= n_folds <= len(speakers):
        raise ValueError(f"n_folds must be between 2 and the {len(speakers)} speakers")
    rng = np.random.default_rng(seed)
    shuffled = [speakers[i] for i in rng.permutation(len(speakers))]
    groups = [shuffled[k::n_folds] for k in range(n_folds)]
    folds = []
    for k, group in enumerate(groups):
        split = speaker_split(clips, test_speakers=group, val_fraction=val_fraction, seed=seed + k)
        folds.append(
            replace(
                split,
                protocol="speaker-fold",
                description=f"fold {k + 1} of {n_folds}: {split.description}",
                seed=seed,
            )
        )
    return folds
