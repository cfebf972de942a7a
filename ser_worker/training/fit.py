"""Fit the CNNs on waveforms: features once (``cache``), batches per step (``batches``), one
Keras fit per member with early stopping on the validation loss.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np

from ser_worker.features.study import ClipFeatures, FeatureSettings, fit_normalizer
from ser_worker.models.cnn import build_model, compile_model
from ser_worker.models.registry import CNN_MEMBERS, input_shape
from ser_worker.training.batches import TrainingBatches
from ser_worker.training.cache import (
    augmented_copies,
    balanced_class_weights,
    build_cache,
    extract_all,
    label_indices,
)
from ser_worker.training.config import Progress, TrainConfig, TrainResult

DEFAULT_CONFIG = TrainConfig()

# When the validation loss stalls for config.reduce_lr_patience epochs the rate halves, down to
# this floor; early stopping then ends the run.
REDUCE_LR_FACTOR = 0.5
MIN_LEARNING_RATE = 1e-5


@contextmanager
def _dtype_policy(precision: str):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _as_float32(model: keras.Model, name: str, settings: FeatureSettings) -> keras.Model:
    """The trained weights in a float32 model: what a loaded bundle serves, so what we evaluate."""
    if model.compute_dtype == "float32":
        return model
    served = build_model(name, input_shape(name, settings))
    served.set_weights(model.get_weights())
    return served


class EpochProgress(keras.callbacks.Callback):
    def __init__(self, model_name: str, epochs: int, progress: Progress) -> None:
        super().__init__()
        self.model_name = model_name
        self.epochs = epochs
        self.progress = progress

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        self.progress(
            f"{self.model_name} epoch {epoch + 1}/{self.epochs}: "
            f"loss {logs.get('loss', float('nan')):.4f} "
            f"val_loss {logs.get('val_loss', float('nan')):.4f} "
            f"val_accuracy {logs.get('val_accuracy', float('nan')):.4f}"
        )


def train(
    train_waveforms: Sequence[np.ndarray],
    train_labels: Sequence[str],
    val_waveforms: Sequence[np.ndarray],
    val_labels: Sequence[str],
    config: TrainConfig = DEFAULT_CONFIG,
    *,
    cache_dir: Path,
    progress: Progress | None = None,
) -> TrainResult:
    """Train each model in config.models on waveforms; see `train_on_features`."""
    started = time.perf_counter()
    _check_sides(train_waveforms, train_labels, val_waveforms, val_labels)
    settings = config.feature_settings
    if progress:
        progress(f"extracting features of {len(train_waveforms) + len(val_waveforms)} clips")
    copies = augmented_copies(train_waveforms, settings, config.augment_copies, config.seed)
    return train_on_features(
        extract_all(train_waveforms, settings),
        train_labels,
        extract_all(val_waveforms, settings),
        val_labels,
        config,
        copies=copies,
        cache_dir=cache_dir,
        progress=progress,
        started=started,
    )


def _check_sides(train_x: Sequence, train_y: Sequence, val_x: Sequence, val_y: Sequence) -> None:
    if len(train_x) != len(train_y) or len(val_x) != len(val_y):
        raise ValueError("each clip needs exactly one label")
    if not train_x or not val_x:
        raise ValueError("training needs at least one training and one validation clip")


def train_on_features(
    train_features: Sequence[ClipFeatures],
    train_labels: Sequence[str],
    val_features: Sequence[ClipFeatures],
    val_labels: Sequence[str],
    config: TrainConfig = DEFAULT_CONFIG,
    *,
    copies: Sequence[Iterable[ClipFeatures]] = (),
    cache_dir: Path,
    progress: Progress | None = None,
    started: float | None = None,
) -> TrainResult:
    """Train each model in config.models; returns them with the best validation weights.

    `copies` holds config.augment_copies augmented versions of the training clips (see
    `build_cache`): computed on the fly by `train`, or read from features extracted elsewhere.
    `cache_dir` must be private to this call (the training inputs are written there) and may
    be deleted once it returns.
    """
    started = time.perf_counter() if started is None else started
    _check_sides(train_features, train_labels, val_features, val_labels)
    if len(copies) != config.augment_copies:
        raise ValueError(
            f"config asks for {config.augment_copies} augmented copies, got {len(copies)}"
        )
    keras.utils.set_random_seed(config.seed)
    settings = config.feature_settings
    y_train, y_val = label_indices(train_labels), label_indices(val_labels)
    # Fitted on the originals only: augmented copies would shift the statistics towards the
    # augmentations, which inference never sees.
    normalizer = fit_normalizer(train_features)
    cache = build_cache(
        train_features,
        y_train,
        normalizer,
        settings,
        Path(cache_dir),
        copies=copies,
        progress=progress,
    )
    class_weights = balanced_class_weights(cache.y) if config.class_weights else None

    models: dict[str, keras.Model] = {}
    history: dict[str, dict[str, list[float]]] = {}
    epochs_run: dict[str, int] = {}
    best_epoch: dict[str, int] = {}
    for offset, name in enumerate(config.models):
        batches = TrainingBatches(
            cache,
            name,
            settings,
            batch_size=config.batch_size,
            class_weights=class_weights,
            random_crop=config.random_crop,
            spec_augment=config.spec_augment,
            seed=config.seed + offset,
        )
        with _dtype_policy(config.precision):
            model = compile_model(
                build_model(name, input_shape(name, settings)), config.learning_rate
            )
        early = keras.callbacks.EarlyStopping(
            monitor="val_loss",
            patience=config.early_stopping_patience,
            restore_best_weights=True,
        )
        callbacks: list[keras.callbacks.Callback] = [
            early,
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss",
                factor=REDUCE_LR_FACTOR,
                patience=config.reduce_lr_patience,
                min_lr=MIN_LEARNING_RATE,
            ),
        ]
        if progress:
            callbacks.append(EpochProgress(name, config.epochs, progress))
        fitted = model.fit(
            batches,
            validation_data=(CNN_MEMBERS[name].inputs(val_features, settings, normalizer), y_val),
            validation_batch_size=config.batch_size,
            epochs=config.epochs,
            callbacks=callbacks,
            verbose=0,
        )
        models[name] = _as_float32(model, name, settings)
        history[name] = {key: [float(v) for v in values] for key, values in fitted.history.items()}
        epochs_run[name] = len(fitted.history["loss"])
        best_epoch[name] = early.best_epoch + 1
    return TrainResult(
        models=models,
        normalizer=normalizer,
        history=history,
        epochs_run=epochs_run,
        best_epoch=best_epoch,
        seconds=time.perf_counter() - started,
    )
