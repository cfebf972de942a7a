"""One experiment: train on a split's training side, evaluate on its test side, make the bundle.

Shared by the training task, the default-model script and the results report, so that every
figure we publish comes from the same code path that produces the served models.
"""

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ser_worker.bundle import Bundle, create_bundle
from ser_worker.datasets import LabelledClip, Split
from ser_worker.features import ClipFeatures
from ser_worker.inference import predict_features
from ser_worker.metrics import evaluate
from ser_worker.training import TrainConfig, augmented_copies, extract_all, train_on_features


def evaluate_bundle(
    bundle: Bundle, waveforms: Sequence[np.ndarray], labels: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Metrics per model (and the ensemble, when the bundle has both) on labelled waveforms.

    Empty when there are no waveforms (a bundle trained on every clip has no test side).
    """
    return evaluate_features(bundle, extract_all(waveforms, bundle.feature_settings), labels)


def evaluate_features(
    bundle: Bundle, features: Sequence[ClipFeatures], labels: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """`evaluate_bundle` for features already extracted under the bundle's settings."""
    if not features:
        return {}
    predictions = predict_features(bundle, features)
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
) -> tuple[Bundle, dict[str, dict[str, Any]]]:
    """Extract every clip's features and augment the training side, then train and evaluate."""
    settings = config.feature_settings
    if progress:
        progress(f"extracting features of {len(waveforms)} clips")
    return train_and_evaluate_features(
        extract_all(waveforms, settings),
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
    bundle.manifest["metrics"] = metrics
    return bundle, metrics
