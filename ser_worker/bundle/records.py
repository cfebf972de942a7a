"""What goes into a bundle's prediction and what comes out: numpy only, so the Python API and
the service can hold them without loading Keras."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ser_worker.labels import EMOTIONS


@dataclass(frozen=True)
class MemberPrediction:
    """One member's (or the ensemble's) answer for one clip."""

    emotion: str
    confidence: float
    probabilities: dict[str, float]
    # The best class holds less than the bundle's calibration.uncertain_below.
    uncertain: bool = False

    @classmethod
    def from_probabilities(
        cls,
        probabilities: np.ndarray,
        labels: Sequence[str] = EMOTIONS,
        uncertain_below: float = 0.5,
    ) -> MemberPrediction:
        # Renormalised in float64 so the stored probabilities sum to 1 despite float32 softmax.
        p = np.asarray(probabilities, dtype=np.float64)
        p = p / p.sum()
        best = int(np.argmax(p))
        return cls(
            emotion=labels[best],
            confidence=float(p[best]),
            probabilities={code: float(v) for code, v in zip(labels, p, strict=True)},
            uncertain=bool(p[best] < uncertain_below),
        )

    def to_dict(self) -> dict:
        return {
            "emotion": self.emotion,
            "confidence": self.confidence,
            "probabilities": dict(self.probabilities),
            "uncertain": self.uncertain,
        }


@dataclass(frozen=True)
class PreparedClip:
    """One decoded clip as each member of a bundle reads it (``Bundle.prepare``)."""

    cnn: np.ndarray  # the CNNs' waveform: edge silence trimmed (float32, SAMPLE_RATE)
    encoder: np.ndarray  # the encoder's waveform: untrimmed
    duration_s: float  # seconds of the CNN waveform (what the service stores)
