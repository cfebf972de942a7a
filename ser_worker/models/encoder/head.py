"""The linear head that reads the encoder's pooled vectors: a multinomial logistic regression,
fitted with scikit-learn and stored as plain arrays."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# scikit-learn's C of every head: 0.01, 0.1 and 1 scored within half a point of each other on the
# validation actors of the speaker-independent folds; 0.1 scored highest.
HEAD_STRENGTH = 0.1


@dataclass(frozen=True)
class LinearHead:
    """Multinomial logistic regression on standardised embeddings, as plain arrays (an .npz,
    never a pickle)."""

    labels: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        logits = ((embeddings - self.mean) / self.scale) @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            labels=np.array(self.labels),
            mean=self.mean,
            scale=self.scale,
            coef=self.coef,
            intercept=self.intercept,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> LinearHead:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return cls(
                tuple(str(label) for label in z["labels"]),
                z["mean"],
                z["scale"],
                z["coef"],
                z["intercept"],
            )


def fit_linear_head(
    embeddings: np.ndarray,
    labels: Sequence[str],
    classes: Sequence[str],
    *,
    strength: float = HEAD_STRENGTH,
) -> LinearHead:
    """Fit the head; classes weighted by inverse frequency (RAVDESS has half as many NEU);
    `strength` is scikit-learn's C (HEAD_STRENGTH)."""
    from sklearn.linear_model import LogisticRegression

    mean = embeddings.mean(axis=0)
    scale = embeddings.std(axis=0)
    scale[scale == 0] = 1.0
    y = np.array([list(classes).index(label) for label in labels])
    model = LogisticRegression(C=strength, max_iter=3000, class_weight="balanced")
    model.fit((embeddings - mean) / scale, y)
    if len(model.classes_) != len(classes):
        raise ValueError("every class needs training clips")
    return LinearHead(
        tuple(classes),
        mean.astype(np.float32),
        scale.astype(np.float32),
        model.coef_.astype(np.float32),
        model.intercept_.astype(np.float32),
    )


# Per-submission adaptation (``Bundle.predict(..., adapt=True)``) standardises a set of clips by its
# own statistics: below this many clips they are too noisy to stand for a recording setup.
MIN_ADAPT_CLIPS = 20


def standardised_by_set(embeddings: np.ndarray) -> np.ndarray:
    """Each dimension minus its mean over the rows, over its spread: what the adapted head reads.

    Corpora differ in level, microphone, room and language far more than emotions differ inside
    one; removing each set's own average and spread leaves how clips differ from each other
    (docs/RESULTS.md, "Robust to the recording": across corpora 0.05-0.19 -> about 0.45-0.5)."""
    mean, std = embeddings.mean(axis=0), embeddings.std(axis=0)
    return ((embeddings - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


def fit_adapted_head(
    embeddings: np.ndarray,
    labels: Sequence[str],
    groups: Sequence[str],
    classes: Sequence[str],
    *,
    strength: float = HEAD_STRENGTH,
) -> LinearHead:
    """A head for per-submission adaptation: fitted on vectors standardised within each group
    (a corpus, a recording setup), as a submission's are at prediction time."""
    return fit_linear_head(
        standardised_by_group(embeddings, groups), labels, classes, strength=strength
    )


def standardised_by_group(embeddings: np.ndarray, groups: Sequence[str]) -> np.ndarray:
    """Each group's rows standardised by that group's own statistics (standardised_by_set)."""
    standardised = np.empty_like(embeddings, dtype=np.float32)
    groups = list(groups)
    for group in set(groups):
        rows = np.array([g == group for g in groups])
        standardised[rows] = standardised_by_set(embeddings[rows])
    return standardised
