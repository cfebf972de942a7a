"""Fit the CNNs on waveforms: features once, augmented copies cached to disk, batches per step.

Memory stays flat however many augmented copies are requested: the training inputs of all
originals and copies are written once to ``np.memmap`` files under ``cache_dir`` and each
training step reads only its batch. Random 2D crops and SpecAugment masks are drawn per batch,
so every epoch sees new variants without storing them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import keras
import numpy as np

from ser_worker.features import augment as augment_module
from ser_worker.features.study import (
    ClipFeatures,
    FeatureSettings,
    Normalizer,
    batch_inputs,
    extract,
    fit_normalizer,
    input_1d,
    input_2d,
)
from ser_worker.labels import DEFAULT_EPOCHS, EMOTIONS, MODEL_NAMES
from ser_worker.models.cnn import build_model, compile_model, input_shape

Progress = Callable[[str], None]

# The stored 2D width is capped so that one very long clip cannot blow up the cache of every
# clip; beyond twice the model window the extra context adds little crop variety.
MAX_STORED_WIDTH_FACTOR = 2
# SpecAugment (Park et al. 2019), scaled to 128 bands x 112 frames: two masks of each kind,
# each at most ~10% of its axis, filled with 0 (= the band mean after standardisation).
FREQ_MASKS = 2
FREQ_MASK_MAX_FRACTION = 0.1
TIME_MASKS = 2
TIME_MASK_MAX_FRACTION = 0.1
REDUCE_LR_FACTOR = 0.5
MIN_LEARNING_RATE = 1e-5
# Training arithmetic: mixed_bfloat16 computes in bfloat16 and keeps float32 weights; on CPUs with
# AMX or AVX512-BF16 it trains the 2D CNN about 1.6x faster (measured: 18 vs 28 ms per clip on
# 2 Xeon cores), elsewhere it is slower. Served models always compute in float32.
PRECISIONS = ("float32", "mixed_bfloat16")


@dataclass(frozen=True)
class TrainConfig:
    models: tuple[str, ...] = MODEL_NAMES
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = 32
    learning_rate: float = 1e-3
    early_stopping_patience: int = 6
    reduce_lr_patience: int = 3
    augment_copies: int = 1
    spec_augment: bool = True
    random_crop: bool = True
    class_weights: bool = True
    seed: int = 0
    precision: str = "float32"
    feature_settings: FeatureSettings = field(default_factory=FeatureSettings)

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in MODEL_NAMES]
        if not self.models or unknown:
            raise ValueError(
                f"models must be a non-empty subset of {MODEL_NAMES}, got {self.models}"
            )
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.augment_copies < 0:
            raise ValueError(f"augment_copies must be >= 0, got {self.augment_copies}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def to_dict(self) -> dict:
        return {
            "models": list(self.models),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "early_stopping_patience": self.early_stopping_patience,
            "reduce_lr_patience": self.reduce_lr_patience,
            "augment_copies": self.augment_copies,
            "spec_augment": self.spec_augment,
            "random_crop": self.random_crop,
            "class_weights": self.class_weights,
            "seed": self.seed,
            "precision": self.precision,
            "feature_settings": self.feature_settings.to_dict(),
        }


@dataclass
class TrainResult:
    models: dict[str, keras.Model]
    normalizer: Normalizer
    history: dict[str, dict[str, list[float]]]
    epochs_run: dict[str, int]
    best_epoch: dict[str, int]  # 1-based epoch whose weights were kept (early stopping restores)
    seconds: float  # wall time of the call; from train(), feature extraction included


def extract_all(waveforms: Sequence[np.ndarray], settings: FeatureSettings) -> list[ClipFeatures]:
    return [extract(np.asarray(y, dtype=np.float32), settings) for y in waveforms]


def label_indices(labels: Sequence[str]) -> np.ndarray:
    index = {code: i for i, code in enumerate(EMOTIONS)}
    unknown = sorted({code for code in labels if code not in index})
    if unknown:
        raise ValueError(f"labels not in {list(EMOTIONS)}: {unknown}")
    return np.array([index[code] for code in labels], dtype=np.int32)


def balanced_class_weights(y: np.ndarray, n_classes: int = len(EMOTIONS)) -> np.ndarray:
    """n / (k * count_c) over the k classes present (sklearn's "balanced"); absent classes get 1."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(n_classes)
    weights[present] = len(y) / (present.sum() * counts[present])
    return weights


@dataclass
class TrainingCache:
    """Training-set inputs on disk: originals first, then their augmented copies."""

    x1: np.ndarray  # memmap (N, 2 * seq_frames, 1) float32
    mel: np.ndarray  # memmap (N, n_mels, width, 1) float32, clip centred, zero padded
    lengths: np.ndarray  # (N,) frames of real signal inside the stored width
    y: np.ndarray  # (N,) class indices
    width: int


def build_cache(
    features: Sequence[ClipFeatures],
    y: np.ndarray,
    normalizer: Normalizer,
    settings: FeatureSettings,
    cache_dir: Path,
    *,
    copies: Sequence[Iterable[ClipFeatures]] = (),
    progress: Progress | None = None,
) -> TrainingCache:
    """Write the inputs of every original and of each augmented copy to memmaps.

    Each element of `copies` yields the features of one augmented version of every original,
    in the same order; they are consumed one clip at a time so RAM never holds them all.
    The mel image is stored wider than the model window (up to the longest clip, capped) in
    the input_2d layout, so a crop of it equals input_2d at the same offset for every clip that
    fits the stored width; longer clips keep their centred part.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    longest = max(f.n_frames for f in features)
    # Rounded up because FeatureSettings only accepts 2D widths that are multiples of 16.
    width = _round_up(
        min(max(longest, settings.mel_frames), MAX_STORED_WIDTH_FACTOR * settings.mel_frames), 16
    )
    wide = replace(settings, mel_frames=width)
    n_originals = len(features)
    n = n_originals * (1 + len(copies))
    x1 = np.lib.format.open_memmap(
        cache_dir / "train_x1.npy",
        mode="w+",
        dtype=np.float32,
        shape=(n, settings.input_length_1d, 1),
    )
    mel = np.lib.format.open_memmap(
        cache_dir / "train_mel.npy",
        mode="w+",
        dtype=np.float32,
        shape=(n, settings.n_mels, width, 1),
    )
    lengths = np.empty(n, dtype=np.int32)

    def write(i: int, clip: ClipFeatures) -> None:
        x1[i] = input_1d(clip, settings, normalizer)
        mel[i] = input_2d(clip, wide, normalizer)
        lengths[i] = min(clip.n_frames, width)

    for i, clip in enumerate(features):
        write(i, clip)
    for number, copy in enumerate(copies):
        if progress:
            progress(f"augmenting: copy {number + 1}/{len(copies)} of {n_originals} clips")
        written = 0
        for i, clip in enumerate(copy):
            write(n_originals * (1 + number) + i, clip)
            written += 1
        if written != n_originals:
            raise ValueError(f"augmented copy {number} has {written} clips, not {n_originals}")
    x1.flush()
    mel.flush()
    # Reopened read-only: batches page in from disk and the OS may evict them again.
    return TrainingCache(
        x1=np.load(cache_dir / "train_x1.npy", mmap_mode="r"),
        mel=np.load(cache_dir / "train_mel.npy", mmap_mode="r"),
        lengths=lengths,
        y=np.tile(y, 1 + len(copies)),
        width=width,
    )


def augmented_copy(
    waveforms: Sequence[np.ndarray], settings: FeatureSettings, rng: np.random.Generator
) -> Iterator[ClipFeatures]:
    """Features of one augmented version of each waveform, computed as they are consumed."""
    for waveform in waveforms:
        augmented, _kind = augment_module.augment(
            np.asarray(waveform, dtype=np.float32), rng, sample_rate=settings.sample_rate
        )
        yield extract(augmented, settings)


def augmented_copies(
    waveforms: Sequence[np.ndarray], settings: FeatureSettings, count: int, seed: int
) -> list[Iterator[ClipFeatures]]:
    """`count` lazy copies (see build_cache) drawn from one Generator, copy after copy."""
    rng = np.random.default_rng(seed)
    return [augmented_copy(waveforms, settings, rng) for _ in range(count)]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


class TrainingBatches(keras.utils.PyDataset):
    """Shuffled training batches read from the disk cache, with per-batch 2D augmentation.

    Order, crops and masks derive from (seed, epoch, batch index) only, so a run is
    reproducible whatever order Keras fetches batches in.
    """

    def __init__(
        self,
        cache: TrainingCache,
        model_name: str,
        settings: FeatureSettings,
        *,
        batch_size: int,
        class_weights: np.ndarray | None,
        random_crop: bool,
        spec_augment: bool,
        seed: int,
    ) -> None:
        super().__init__()
        self.cache = cache
        self.model_name = model_name
        self.settings = settings
        self.batch_size = batch_size
        self.sample_weights = (
            None if class_weights is None else class_weights[cache.y].astype(np.float32)
        )
        self.random_crop = random_crop
        self.spec_augment = spec_augment
        self.seed = seed
        self.epoch = 0
        self.order = self._permutation()

    def __len__(self) -> int:
        # The remainder batch is dropped (a different one each epoch after reshuffling): a batch
        # of one or two clips gives BatchNormalization useless statistics.
        return max(1, len(self.cache.y) // self.batch_size)

    def __getitem__(self, index: int):
        # Sorted indices read the memmap sequentially; order within a batch does not matter.
        ids = np.sort(self.order[index * self.batch_size : (index + 1) * self.batch_size])
        y = self.cache.y[ids]
        if self.model_name == "cnn1d":
            x = np.asarray(self.cache.x1[ids])
        else:
            rng = np.random.default_rng((self.seed, self.epoch, index))
            x = self._crop(ids, rng)
            if self.spec_augment:
                _mask(x, rng)
        if self.sample_weights is None:
            return x, y
        return x, y, self.sample_weights[ids]

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self.order = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng((self.seed, self.epoch)).permutation(len(self.cache.y))

    def _crop(self, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        width, window = self.cache.width, self.settings.mel_frames
        lengths = self.cache.lengths[ids]
        # input_2d centred each clip in the stored width; a clip no longer than the window gets
        # the window centred on it (identical to input_2d at the model width), a longer one a
        # window anywhere inside its real frames.
        first = (width - lengths) // 2
        slack = np.maximum(lengths - window, 0)
        if self.random_crop:
            shift = np.floor(rng.random(len(ids)) * (slack + 1)).astype(np.int64)
        else:
            shift = slack // 2
        starts = np.where(slack > 0, first + shift, first - (window - lengths) // 2)
        block = np.asarray(self.cache.mel[ids])
        cols = starts[:, None] + np.arange(window)[None, :]
        return np.take_along_axis(block, cols[:, None, :, None], axis=2)


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


def _mask(x: np.ndarray, rng: np.random.Generator) -> None:
    """SpecAugment frequency and time masks, in place, drawn independently per clip."""
    batch, n_mels, n_frames, _ = x.shape
    for axis, count, fraction, size in (
        (1, FREQ_MASKS, FREQ_MASK_MAX_FRACTION, n_mels),
        (2, TIME_MASKS, TIME_MASK_MAX_FRACTION, n_frames),
    ):
        max_width = max(1, int(size * fraction))
        positions = np.arange(size)[None, :]
        shape = [batch, 1, 1, 1]
        shape[axis] = size
        for _ in range(count):
            widths = rng.integers(0, max_width + 1, size=batch)
            starts = np.floor(rng.random(batch) * (size - widths + 1)).astype(np.int64)
            masked = (positions >= starts[:, None]) & (positions < (starts + widths)[:, None])
            x *= ~masked.reshape(shape)


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
    config: TrainConfig = TrainConfig(),
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
    config: TrainConfig = TrainConfig(),
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
    x1_val, x2_val = batch_inputs(val_features, settings, normalizer)
    val_inputs = {"cnn1d": x1_val, "cnn2d": x2_val}
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
            validation_data=(val_inputs[name], y_val),
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
