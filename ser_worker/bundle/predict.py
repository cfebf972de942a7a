"""Batched prediction with a loaded bundle: both CNNs, the speech encoder's head when the bundle
has one, and their ensemble for every clip. ``Bundle.predict_prepared`` runs here; training and
research call the lower steps (features or encoder vectors already computed) directly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ser_worker.bundle.core import Bundle
from ser_worker.bundle.records import MemberPrediction, PreparedClip
from ser_worker.evaluation.ensemble import mix
from ser_worker.features.study import ClipFeatures, extract
from ser_worker.labels import ENCODER, ENSEMBLE
from ser_worker.models.registry import CNN_MEMBERS


def predict_clips(
    bundle: Bundle, clips: Sequence[PreparedClip], *, batch_size: int = 64
) -> list[dict[str, MemberPrediction]]:
    """What ``Bundle.predict_prepared`` returns: a MemberPrediction per member of the bundle
    (``Bundle.members``) and the ensemble (``Bundle.ensemble_weights``), one dict per clip;
    each member reads its own waveform of the clip."""
    settings = bundle.feature_settings
    return predict_features(
        bundle,
        [extract(clip.cnn, settings) for clip in clips],
        encoder_vectors=encoder_vectors(bundle, [clip.encoder for clip in clips]),
        batch_size=batch_size,
    )


def predict(
    bundle: Bundle,
    waveforms: Sequence[np.ndarray],
    *,
    untrimmed: Sequence[np.ndarray] | None = None,
    batch_size: int = 64,
) -> list[dict[str, MemberPrediction]]:
    """Predict waveforms already decoded and trimmed (float32 mono at the bundle's rate).

    The service's older calling convention, kept until its tasks call ``Bundle.predict_prepared``:
    `untrimmed` holds the same clips before silence trimming, which the encoder's head reads;
    without them the encoder sees `waveforms`.
    """
    untrimmed = untrimmed if untrimmed is not None else waveforms
    rate = bundle.feature_settings.sample_rate
    clips = [
        PreparedClip(cnn=y, encoder=u, duration_s=len(y) / rate)
        for y, u in zip(waveforms, untrimmed, strict=True)
    ]
    return predict_clips(bundle, clips, batch_size=batch_size)


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
) -> list[dict[str, MemberPrediction]]:
    """Like `predict` for features (and encoder vectors) that were already computed."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    probabilities = predict_probabilities(
        bundle, features_list, encoder_vectors=encoder_vectors, batch_size=batch_size
    )
    probabilities[ENSEMBLE] = mix(probabilities, bundle.ensemble_weights)
    labels = bundle.labels
    return [
        {
            name: MemberPrediction.from_probabilities(p[i], labels)
            for name, p in probabilities.items()
        }
        for i in range(len(features_list))
    ]


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
        chunk = features_list[start : start + batch_size]
        for name, model in bundle.models.items():
            # One compiled call per chunk: model.predict() pays its set-up cost on every call.
            x = CNN_MEMBERS[name].inputs(chunk, settings, normalizer)
            outputs[name].append(np.asarray(model.predict_on_batch(x)))
    probabilities = {
        name: np.concatenate(chunks) if chunks else np.zeros((0, n_classes), np.float32)
        for name, chunks in outputs.items()
    }
    if bundle.encoder_head is not None:
        probabilities[ENCODER] = bundle.encoder_head.probabilities(encoder_vectors)
    return probabilities
