"""One experiment: train on a split's training side, evaluate on its test side, make the bundle.

Shared by the training task, the default-model script and the results report, so that every
figure we publish comes from the same code path that produces the served models.
"""

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ser_worker.bundle import Bundle, create_bundle, with_encoder_head
from ser_worker.bundle.core import (
    embed,
    encoder_vectors,
    predict_features,
    predict_probabilities,
)
from ser_worker.bundle.manifest import Calibration, Preprocessing
from ser_worker.bundle.preprocess import at_loudness
from ser_worker.datasets import LabelledClip, Split
from ser_worker.evaluation.calibration import fit_temperature
from ser_worker.evaluation.ensemble import mix
from ser_worker.evaluation.metrics import choose_share, evaluate
from ser_worker.features.channel import channel_copies
from ser_worker.features.study import ClipFeatures
from ser_worker.labels import EMOTIONS, ENCODER
from ser_worker.models.encoder.head import HEAD_STRENGTH, LinearHead
from ser_worker.training.cache import augmented_copies, extract_all
from ser_worker.training.config import TrainConfig
from ser_worker.training.fit import train_on_features


def evaluate_bundle(
    bundle: Bundle,
    waveforms: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    untrimmed: Sequence[np.ndarray] | None = None,
) -> dict[str, dict[str, Any]]:
    """Metrics per member (and the ensemble) on labelled waveforms; `untrimmed` as in
    inference.predict.

    Empty when there are no waveforms (a bundle trained on every clip has no test side).
    """
    if not waveforms:
        return {}
    return evaluate_features(
        bundle,
        extract_all(waveforms, bundle.feature_settings),
        labels,
        encoder_vectors=encoder_vectors(bundle, untrimmed if untrimmed is not None else waveforms),
    )


def evaluate_features(
    bundle: Bundle,
    features: Sequence[ClipFeatures],
    labels: Sequence[str],
    *,
    encoder_vectors: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """`evaluate_bundle` for features (and encoder vectors) already computed."""
    if not features:
        return {}
    predictions = predict_features(bundle, features, encoder_vectors=encoder_vectors)
    return {
        model: evaluate(labels, [clip[model].emotion for clip in predictions])
        for model in predictions[0]
    }


def train_and_evaluate(
    waveforms: Sequence[np.ndarray],
    clips: Sequence[LabelledClip],
    split: Split,
    config: TrainConfig,
    *,
    cache_dir: Path,
    progress: Callable[[str], None] | None = None,
    training_data: dict[str, Any] | None = None,
    licences: Sequence[str] = (),
    ensemble_weights: dict[str, float] | None = None,
    untrimmed: Sequence[np.ndarray] | None = None,
) -> tuple[Bundle, dict[str, dict[str, Any]]]:
    """Extract every clip's features and augment the training side, then train and evaluate.

    With `untrimmed` (the same clips before silence trimming) the bundle also gets the speech
    encoder's head (see `add_encoder`).
    """
    settings = config.feature_settings
    if progress:
        progress(f"extracting features of {len(waveforms)} clips")
    features = extract_all(waveforms, settings)
    bundle, metrics = train_and_evaluate_features(
        features,
        augmented_copies(
            [waveforms[i] for i in split.train], settings, config.augment_copies, config.seed
        ),
        clips,
        split,
        config,
        cache_dir=cache_dir,
        progress=progress,
        training_data=training_data,
        licences=licences,
        ensemble_weights=ensemble_weights,
    )
    if untrimmed is None:
        return bundle, metrics
    if progress:
        progress(
            f"speech encoder: vectors of {len(untrimmed)} clips and {config.channel_copies} "
            "channel copies of the training side, then its head"
        )
    return add_encoder(
        bundle, features, untrimmed, clips, split, copies=config.channel_copies, seed=config.seed
    )


def add_encoder(
    bundle: Bundle,
    features: Sequence[ClipFeatures],
    untrimmed: Sequence[np.ndarray],
    clips: Sequence[LabelledClip],
    split: Split,
    *,
    copies: int = 0,
    seed: int = 0,
) -> tuple[Bundle, dict[str, dict[str, Any]]]:
    """The bundle plus the speech encoder's head fitted on split.train and `copies` channel
    copies of it (features.channel), its ensemble share and the ensemble's temperature chosen
    on split.val (the CNNs keep their ratio), and the metrics of the whole on split.test.

    `untrimmed` are the clips as the bundle's encoder reads them (at the bundle's loudness).
    A training side without every class gets no head (the head has one output per class): the
    bundle comes back as it was.
    """
    labels = [clip.emotion for clip in clips]
    if {labels[i] for i in split.train} != set(EMOTIONS):
        return bundle, bundle.manifest.metrics
    vectors = embed(untrimmed)
    train, val, test = (list(indices) for indices in (split.train, split.val, split.test))
    head, adapted = fit_heads(
        vectors[train],
        [untrimmed[i] for i in train],
        [clips[i] for i in train],
        bundle.manifest.member_preprocessing,
        copies=copies,
        seed=seed,
    )
    cnn_weights = bundle.ensemble_weights
    cnn_val = predict_probabilities(bundle, [features[i] for i in val])
    val_labels, encoder_val = [labels[i] for i in val], head.probabilities(vectors[val])
    share = choose_share(val_labels, encoder_val, mix(cnn_val, cnn_weights))
    weights = {ENCODER: share} | {
        name: round((1 - share) * weight, 6) for name, weight in cnn_weights.items()
    }
    calibration = (
        Calibration(
            temperature=round(
                fit_temperature(val_labels, mix({ENCODER: encoder_val} | cnn_val, weights)), 4
            )
        )
        if val
        else None
    )
    with_head = with_encoder_head(
        bundle, head, weights, adapted_head=adapted, calibration=calibration
    )
    metrics = evaluate_features(
        with_head,
        [features[i] for i in test],
        [labels[i] for i in test],
        encoder_vectors=vectors[test],
    )
    with_head.manifest.metrics = metrics
    return with_head, metrics


def fit_heads(
    vectors: np.ndarray,
    untrimmed: Sequence[np.ndarray],
    clips: Sequence[LabelledClip],
    preprocessing: Preprocessing,
    *,
    copies: int,
    seed: int,
    layers: Sequence[int] | None = None,
    pooling: str | None = None,
    strength: float = HEAD_STRENGTH,
) -> tuple[LinearHead, LinearHead]:
    """The speech encoder's head and its adapted head, fitted on the clips' `vectors` plus those
    of `copies` channel copies of each clip (features.channel, read at `preprocessing`'s
    loudness as the bundle reads every clip), the copies embedded with `layers` and `pooling`
    as `vectors` were (bundle.core.embed)."""
    from ser_worker.models.encoder import fit_adapted_head, fit_linear_head

    copied = channel_copies(untrimmed, [clip.speaker for clip in clips], copies, seed)
    all_vectors = np.concatenate(
        [vectors]
        + [embed([at_loudness(y, preprocessing) for y in copy], layers, pooling) for copy in copied]
    )
    labels = [clip.emotion for clip in clips] * (1 + copies)
    head = fit_linear_head(all_vectors, labels, EMOTIONS, strength=strength)
    # Per-submission adaptation reads vectors standardised within one recording setup: the
    # head for it learns from each corpus, and each channel copy of it, standardised alone.
    setups = [f"{clip.corpus}:{k}" for k in range(1 + copies) for clip in clips]
    adapted = fit_adapted_head(all_vectors, labels, setups, EMOTIONS, strength=strength)
    return head, adapted


def train_and_evaluate_features(
    features: Sequence[ClipFeatures],
    copies: Sequence[Iterable[ClipFeatures]],
    clips: Sequence[LabelledClip],
    split: Split,
    config: TrainConfig,
    *,
    cache_dir: Path,
    progress: Callable[[str], None] | None = None,
    training_data: dict[str, Any] | None = None,
    licences: Sequence[str] = (),
    ensemble_weights: dict[str, float] | None = None,
) -> tuple[Bundle, dict[str, dict[str, Any]]]:
    """Like `train_and_evaluate` from features of every clip and augmented copies of split.train.

    Lets features be extracted once and reused by many runs, or on another machine.
    """

    def side(indices: Sequence[int]) -> tuple[list[ClipFeatures], list[str]]:
        return [features[i] for i in indices], [clips[i].emotion for i in indices]

    train_x, train_y = side(split.train)
    val_x, val_y = side(split.val)
    test_x, test_y = side(split.test)
    result = train_on_features(
        train_x,
        train_y,
        val_x,
        val_y,
        config,
        copies=copies,
        cache_dir=cache_dir,
        progress=progress,
    )
    bundle = create_bundle(
        result.models,
        feature_settings=config.feature_settings,
        normalizer=result.normalizer,
        split=split.to_dict(),
        history=result.history,
        training_data={
            "clips": len(clips),
            "sizes": {"train": len(train_x), "val": len(val_x), "test": len(test_x)},
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "seconds": round(result.seconds, 1),
            **(training_data or {}),
        },
        licences=list(licences),
        ensemble_weights=ensemble_weights,
    )
    metrics = evaluate_features(bundle, test_x, test_y)
    # Measured with the finished bundle, so added after its version (a hash of the weights and
    # the training manifest) is fixed.
    bundle.manifest.metrics = metrics
    return bundle, metrics
