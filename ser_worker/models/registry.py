"""The CNN members a bundle can hold, by name: the input each one reads. Keras-free, so code
that checks a bundle's shapes or stacks a batch needs no model library; ``models.cnn`` builds the
networks for these shapes.

A new CNN member is one entry here (its input) and one builder in ``models.cnn``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from ser_worker.features.study import (
    ClipFeatures,
    FeatureSettings,
    Normalizer,
    inputs_1d,
    inputs_2d,
)
from ser_worker.labels import CNN1D, CNN2D, MODEL_NAMES

Stack = Callable[[Sequence[ClipFeatures], FeatureSettings, Normalizer], np.ndarray]


@dataclass(frozen=True)
class CnnSpec:
    name: str
    shape: Callable[[FeatureSettings], tuple[int, ...]]
    stack: Stack

    def input_shape(self, settings: FeatureSettings) -> tuple[int, ...]:
        """One clip's input, without the batch axis."""
        return self.shape(settings)

    def inputs(
        self, features: Sequence[ClipFeatures], settings: FeatureSettings, normalizer: Normalizer
    ) -> np.ndarray:
        """The stacked batch this member predicts on (centred 2D windows: no augmentation)."""
        return self.stack(features, settings, normalizer)


CNN_MEMBERS: Mapping[str, CnnSpec] = MappingProxyType(
    {
        CNN1D: CnnSpec(CNN1D, lambda settings: settings.input_shape_1d, inputs_1d),
        CNN2D: CnnSpec(CNN2D, lambda settings: settings.input_shape_2d, inputs_2d),
    }
)


def cnn_member(name: str) -> CnnSpec:
    try:
        return CNN_MEMBERS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; expected one of {MODEL_NAMES}") from None


def input_shape(name: str, settings: FeatureSettings) -> tuple[int, ...]:
    """The per-clip input shape a model takes under the given feature settings."""
    return cnn_member(name).input_shape(settings)
