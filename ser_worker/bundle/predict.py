"""Batched prediction with a loaded bundle: both CNNs, the speech encoder's head when the bundle
has one, and their ensemble for every clip."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ser_worker.bundle import Bundle
from ser_worker.features.study import ClipFeatures, batch_inputs, extract
from ser_worker.labels import EMOTIONS, ENCODER, ENSEMBLE


@dataclass(frozen=True)
class Prediction:
    emotion: str
    confidence: float
    probabilities: dict[str, float]

    @classmethod
    def from_probabilities(
        cls, probabilities: np.ndarray, labels: Sequence[str] = EMOTIONS
    ) -> Prediction:
        # Renormalised in float64 so the stored probabilities sum to 1 despite float32 softmax.
        p = np.asarray(probabilities, dtype=np.float64)
        p = p / p.sum()
        best = int(np.argmax(p))
        return cls(
            emotion=labels[best],
            confidence=float(p[best]),
            probabilities={code: float(v) for code, v in zip(labels, p, strict=True)},
        )

    def to_dict(self) -> dict:
        return {
            "emotion": self.emotion,
            "confidence": self.confidence,
            "probabilities": dict(self.probabilities),
        }


def predict(
    bundle: Bundle,
    waveforms: Sequence[np.ndarray],
    *,
    untrimmed: Sequence[np.ndarray] | None = None,
    batch_size: int = 64,
) -> list[dict[str, Prediction]]:
    """Predict every waveform (float32 mono at the bundle's sample rate, edges trimmed).

    Returns one dict per clip with a Prediction per member of the bundle (``Bundle.members``)
    plus ``"ensemble"``, the weighted mean of their probability vectors
    (``Bundle.ensemble_weights``). `untrimmed` holds the same clips before silence trimming:
    the encoder's head was fitted on those (validation actors scored 2-3 points higher than
    with trimmed clips); without them the encoder sees `waveforms`.
    """
    settings = bundle.feature_settings
    return predict_features(
        bundle,
        [extract(y, settings) for y in waveforms],
        encoder_vectors=encoder_vectors(bundle, untrimmed if untrimmed is not None else waveforms),
        batch_size=batch_size,
    )


def encoder_vectors(bundle: Bundle, waveforms: Sequence[np.ndarray]) -> np.ndarray | None:
    """The speech encoder's vectors of the clips, if the bundle has a head to read them."""
    if bundle.encoder_head is None:
        return None
    return embed(waveforms, bundle.encoder_layers)


def embed(waveforms: Sequence[np.ndarray], layers: Sequence[int] | None = None) -> np.ndarray:
    """The speech encoder's vectors (pooling `layers`, by default speech_encoder.LAYERS), from
    this process's encoder (loaded on first use)."""
    from ser_worker.config import get_settings
    from ser_worker.models.encoder import LAYERS, load_encoder

    encoder = load_encoder(tuple(layers or LAYERS), get_settings().tf_threads)
    return encoder.embed(waveforms)


def predict_features(
    bundle: Bundle,
    features_list: Sequence[ClipFeatures],
    *,
    encoder_vectors: np.ndarray | None = None,
    batch_size: int = 64,
) -> list[dict[str, Prediction]]:
    """Like `predict` for features (and encoder vectors) that were already computed."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    probabilities = predict_probabilities(
        bundle, features_list, encoder_vectors=encoder_vectors, batch_size=batch_size
    )
    labels, weights = bundle.labels, bundle.ensemble_weights
    results = []
    for i in range(len(features_list)):
        per_model = {name: p[i] for name, p in probabilities.items()}
        clip = {name: Prediction.from_probabilities(p, labels) for name, p in per_model.items()}
        clip[ENSEMBLE] = Prediction.from_probabilities(
            sum(weights[name] * p for name, p in per_model.items()), labels
        )
        results.append(clip)
    return results


def predict_probabilities(
    bundle: Bundle,
    features_list: Sequence[ClipFeatures],
    *,
    encoder_vectors: np.ndarray | None = None,
    batch_size: int = 64,
) -> dict[str, np.ndarray]:
    """Raw softmax outputs, (N, n_classes) per member, for evaluation code that needs arrays."""
    if bundle.encoder_head is not None and (
        encoder_vectors is None or len(encoder_vectors) != len(features_list)
    ):
        raise ValueError("this bundle has an encoder head: pass one encoder vector per clip")
    settings, normalizer = bundle.feature_settings, bundle.normalizer
    n_classes = len(bundle.labels)
    outputs: dict[str, list[np.ndarray]] = {name: [] for name in bundle.models}
    for start in range(0, len(features_list), batch_size):
        x1, x2 = batch_inputs(features_list[start : start + batch_size], settings, normalizer)
        inputs = {"cnn1d": x1, "cnn2d": x2}
        for name, model in bundle.models.items():
            # One compiled call per chunk: model.predict() per clip costs ~100 ms of overhead.
            outputs[name].append(np.asarray(model.predict_on_batch(inputs[name])))
    probabilities = {
        name: np.concatenate(chunks) if chunks else np.zeros((0, n_classes), np.float32)
        for name, chunks in outputs.items()
    }
    if bundle.encoder_head is not None:
        probabilities[ENCODER] = bundle.encoder_head.probabilities(encoder_vectors)
    return probabilities
