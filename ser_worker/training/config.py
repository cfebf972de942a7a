"""What a training run is asked for (TrainConfig) and what it gives back (TrainResult).

Keras-free: the CLI, the service and research read and validate a config without loading a model
library.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ser_worker.features.study import FeatureSettings, Normalizer
from ser_worker.labels import DEFAULT_EPOCHS, MODEL_NAMES

if TYPE_CHECKING:
    import keras

Progress = Callable[[str], None]

# Training arithmetic: mixed_bfloat16 computes in bfloat16 and keeps float32 weights; on CPUs with
# AMX or AVX512-BF16 it trains the 2D CNN faster, elsewhere it is slower. Served models always
# compute in float32.
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
    # Copies of each training clip through a random recording channel (features.channel) that
    # the speech encoder's head also learns from (docs/RESULTS.md, "Robust to the recording").
    channel_copies: int = 2
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
        for name in ("augment_copies", "channel_copies"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
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
            "channel_copies": self.channel_copies,
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
