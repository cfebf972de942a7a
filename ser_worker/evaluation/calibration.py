"""Confidence that means something: temperature scaling of the ensemble's probabilities, fitted on
validation speakers, and the expected calibration error that says how far it got. numpy only
(scipy's bounded scalar minimiser for the fit)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ser_worker.labels import EMOTIONS

# Bins of the expected calibration error: the usual 15 equal-width confidence bins.
ECE_BINS = 15
_TINY = 1e-12


def temperature_scaled(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)`` row by row: T > 1 softens, T < 1 sharpens, T = 1 is the identity.

    The ensemble is a mean of probability vectors, so its logits are their logarithms."""
    p = np.asarray(probabilities, dtype=np.float64)
    if temperature == 1.0:
        return p
    logits = np.log(np.maximum(p, _TINY)) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=-1, keepdims=True)


def _nll(probabilities: np.ndarray, truth: np.ndarray) -> float:
    return float(-np.mean(np.log(np.maximum(probabilities[np.arange(len(truth)), truth], _TINY))))


def fit_temperature(
    labels: Sequence[str], probabilities: np.ndarray, classes: Sequence[str] = EMOTIONS
) -> float:
    """The temperature in [0.05, 20] that minimises the negative log-likelihood of `labels`."""
    from scipy.optimize import minimize_scalar

    truth = np.array([list(classes).index(label) for label in labels])
    p = np.asarray(probabilities, dtype=np.float64)
    # Searched in log-temperature, where the likelihood is smooth and the range symmetric.
    result = minimize_scalar(
        lambda log_t: _nll(temperature_scaled(p, float(np.exp(log_t))), truth),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
    )
    return float(np.exp(result.x))


def expected_calibration_error(
    labels: Sequence[str],
    probabilities: np.ndarray,
    classes: Sequence[str] = EMOTIONS,
    bins: int = ECE_BINS,
) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by clips."""
    p = np.asarray(probabilities, dtype=np.float64)
    truth = np.array([list(classes).index(label) for label in labels])
    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == truth
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)
