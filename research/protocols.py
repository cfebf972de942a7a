"""The evaluation protocols of docs/RESULTS.md (which clips train, validate and test) and the
training recipes they are run with. Shared by the CNN grid (research/report.py) and the encoder
report, so an encoder row and a CNN run of the same name and seed hold the same clips."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

from ser_worker.labels import ENSEMBLE, MODEL_NAMES

# The models each CNN run scores: both CNNs and their ensemble.
MODELS: tuple[str, ...] = (*MODEL_NAMES, ENSEMBLE)
RECIPES = ("study", "ours", "ours-cmn")
# Every protocol is run with these; other recipes are experiments shown where they were run.
REQUIRED_RECIPES = ("study", "ours")
PROTOCOLS = (
    "random-ravdess",
    "speaker-ravdess",
    "speaker-ravdess-with-tess",
    "speaker-tess",
    "cross-corpus",
)
N_FOLDS = 5
FOLDS = tuple(range(N_FOLDS))
TESS_SPEAKERS = ("tess:OAF", "tess:YAF")


def recipe_config(recipe: str, epochs: int, seed: int, precision: str):
    """The TrainConfig of a recipe: `study` trains plainly, `ours` is TrainConfig(), `ours-cmn`
    adds per-utterance mean normalisation of the log-mel."""
    from ser_worker.features.study import FeatureSettings
    from ser_worker.training.config import TrainConfig

    if recipe == "ours-cmn":
        return TrainConfig(
            epochs=epochs,
            seed=seed,
            precision=precision,
            feature_settings=FeatureSettings(subtract_clip_mean=True),
        )
    if recipe == "study":
        return TrainConfig(
            epochs=epochs,
            seed=seed,
            precision=precision,
            augment_copies=0,
            spec_augment=False,
            random_crop=False,
            class_weights=False,
        )
    return TrainConfig(epochs=epochs, seed=seed, precision=precision)


def experiments(
    protocol: str, ravdess: list, tess: list, folds: Iterable[int], seed: int, tess_every: int = 1
) -> Iterator[tuple]:
    """(name, clips, split) triples; splits index into `clips`.

    tess_every > 1 trains on every n-th TESS clip of each speaker and emotion (TESS repeats the
    same 200 words for every speaker and emotion); TESS test sides always keep every clip.
    """
    from ser_worker.datasets import random_split, speaker_folds, tess_thinned_out

    if protocol == "random-ravdess":
        yield "random-ravdess", ravdess, random_split(ravdess, seed=seed)
    elif protocol == "speaker-ravdess":
        all_folds = speaker_folds(ravdess, n_folds=N_FOLDS, seed=seed)
        for fold in folds:
            yield f"speaker-ravdess-fold{fold}", ravdess, all_folds[fold]
    elif protocol == "speaker-ravdess-with-tess":
        # The same actor folds, with the TESS speakers (never tested here) added to training.
        both = ravdess + tess
        left_out = tess_thinned_out(both, tess_every)
        tess_indices = [i for i in range(len(ravdess), len(both)) if i not in left_out]
        all_folds = speaker_folds(ravdess, n_folds=N_FOLDS, seed=seed)
        for fold in folds:
            split = all_folds[fold]
            yield (
                f"speaker-ravdess-with-tess-fold{fold}",
                both,
                replace(
                    split,
                    train=split.train + tuple(tess_indices),
                    train_speakers=split.train_speakers + TESS_SPEAKERS,
                    description=split.description
                    + f"; training side adds {len(tess_indices)} TESS clips",
                ),
            )
    elif protocol == "speaker-tess":
        for train_speaker, test_speaker in (TESS_SPEAKERS, TESS_SPEAKERS[::-1]):
            yield (
                f"speaker-tess-{train_speaker[5:]}-to-{test_speaker[5:]}",
                tess,
                transfer_split(
                    tess,
                    lambda c, s=train_speaker: c.speaker == s,
                    tess_thinned_out(tess, tess_every),
                    seed,
                    f"trained on {train_speaker}, tested on {test_speaker}",
                ),
            )
    elif protocol == "cross-corpus":
        both = ravdess + tess
        for source in ("ravdess", "tess"):
            target = "tess" if source == "ravdess" else "ravdess"
            yield (
                f"cross-{source}-to-{target}",
                both,
                transfer_split(
                    both,
                    lambda c, s=source: c.corpus == s,
                    tess_thinned_out(both, tess_every),
                    seed,
                    f"trained on {source.upper()}, tested on all of {target.upper()}",
                ),
            )
    else:
        raise ValueError(protocol)


def transfer_split(
    clips: list, on_train_side: Callable, not_trained: set[int], seed: int, description: str
):
    """Train (and validate, 10% stratified) on one side, test on everything else."""
    from ser_worker.datasets import Split, random_split

    train_side = [i for i, clip in enumerate(clips) if on_train_side(clip) and i not in not_trained]
    if not_trained:
        description += f" (training side thinned to {len(train_side)} clips)"
    test_side = [i for i, clip in enumerate(clips) if not on_train_side(clip)]
    inner = random_split(
        [clips[i] for i in train_side], test_fraction=0.0, val_fraction=0.1, seed=seed
    )
    return Split(
        train=tuple(train_side[i] for i in inner.train),
        val=tuple(train_side[i] for i in inner.val),
        test=tuple(test_side),
        protocol="transfer",
        description=description,
        seed=seed,
    )
