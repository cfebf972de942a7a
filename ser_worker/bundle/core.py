"""The loaded bundle: its members, their ensemble weights, and ``Bundle.predict``.

``Bundle.predict`` is the one entry point from a signal to every member's answer and the
ensemble: it prepares each clip as the manifest says (``prepare``), then runs the members in
batches (``predict_prepared``). Keras and the feature code are imported on first use, so a
Bundle that only carries a manifest stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from ser_worker.bundle.manifest import (
    BundleError,
    Manifest,
)
from ser_worker.bundle.records import MemberPrediction, PreparedClip
from ser_worker.evaluation.calibration import temperature_scaled
from ser_worker.evaluation.ensemble import mix, normalised_weights
from ser_worker.labels import EMOTIONS, ENCODER, ENSEMBLE

if TYPE_CHECKING:
    import keras

    from ser_worker.audio import AudioLimits
    from ser_worker.features.study import ClipFeatures, FeatureSettings, Normalizer
    from ser_worker.models.encoder import LinearHead


@dataclass
class Bundle:
    manifest: Manifest
    models: dict[str, keras.Model]
    encoder_head: LinearHead | None = None
    # Read instead of encoder_head under per-submission adaptation (predict(..., adapt=True)).
    adapted_head: LinearHead | None = None

    def __post_init__(self) -> None:
        self.manifest = Manifest.model_validate(self.manifest)

    @property
    def members(self) -> tuple[str, ...]:
        """What the ensemble averages: the CNNs, and the encoder's head when there is one."""
        return (*self.models, *((ENCODER,) if self.encoder_head is not None else ()))

    @property
    def can_adapt(self) -> bool:
        """Whether this bundle can standardise a submission's encoder vectors by their own
        statistics (``predict(..., adapt=True)``)."""
        return self.adapted_head is not None

    @property
    def encoder_layers(self) -> tuple[int, ...]:
        """The encoder blocks whose pooled outputs the head reads (see models.encoder.LAYERS)."""
        return self.manifest.encoder_layers

    @property
    def encoder_pooling(self) -> str:
        """How the head's vectors pool the encoder's frames (models.encoder.pooling)."""
        return self.manifest.encoder_pooling

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.manifest.labels)

    @property
    def ensemble_weights(self) -> dict[str, float]:
        """Each model's share of the ensemble, summing to 1; equal unless the manifest says."""
        return normalised_weights(self.manifest.ensemble_weights or None, self.members)

    @property
    def adapted_ensemble_weights(self) -> dict[str, float]:
        """The ensemble's weights under per-submission adaptation (the manifest's, else the
        adapted encoder alone)."""
        recorded = self.manifest.adapted_ensemble_weights
        alone = {name: float(name == ENCODER) for name in self.members}
        return normalised_weights(recorded or alone, self.members)

    @cached_property
    def feature_settings(self) -> FeatureSettings:
        from ser_worker.features.study import FeatureSettings

        return FeatureSettings.from_dict(self.manifest.feature_settings)

    @cached_property
    def normalizer(self) -> Normalizer:
        from ser_worker.features.study import Normalizer

        return Normalizer.from_dict(self.manifest.normalizer)

    def prepare(
        self, signal: np.ndarray, sampling_rate: int, limits: AudioLimits | None = None
    ) -> PreparedClip:
        """One mono clip as each member reads it (resampled, trimmed as the manifest says).

        Raises an ser_worker.audio.AudioError (TooShortError) when the clip is unusable.
        """
        from ser_worker.bundle.preprocess import prepare_clip

        return prepare_clip(signal, sampling_rate, self.manifest.member_preprocessing, limits)

    def predict_prepared(
        self, clips: Sequence[PreparedClip], *, batch_size: int = 64, adapt: bool = False
    ) -> list[dict[str, MemberPrediction]]:
        """One dict per clip: a MemberPrediction per member (``members``) plus the ensemble.

        `adapt`: the clips are one submission from one recording setup, and the encoder's
        vectors are standardised by their own statistics (``adapted_head``); each clip's answer
        then depends on the others. Needs MIN_ADAPT_CLIPS clips and a bundle that can_adapt.
        """
        return predict_clips(self, clips, batch_size=batch_size, adapt=adapt)

    def predict(
        self,
        signals: Sequence[np.ndarray],
        sampling_rate: int,
        *,
        limits: AudioLimits | None = None,
        batch_size: int = 64,
        adapt: bool = False,
    ) -> list[dict[str, MemberPrediction]]:
        """``predict_prepared`` of every signal; an unusable one raises its AudioError."""
        clips = [self.prepare(y, sampling_rate, limits) for y in signals]
        return self.predict_prepared(clips, batch_size=batch_size, adapt=adapt)


def check_encoder_head(head: LinearHead, layers: tuple[int, ...], pooling: str) -> None:
    from ser_worker.models.encoder import embedding_size

    size = embedding_size(layers, pooling)
    if head.labels != EMOTIONS or head.coef.shape != (len(EMOTIONS), size):
        raise BundleError(
            f"the encoder head does not map vectors of encoder layers {list(layers)}, "
            f"pooled {pooling!r}, to {list(EMOTIONS)}"
        )


def predict_clips(
    bundle: Bundle, clips: Sequence[PreparedClip], *, batch_size: int = 64, adapt: bool = False
) -> list[dict[str, MemberPrediction]]:
    """What ``Bundle.predict_prepared`` returns: a MemberPrediction per member of the bundle
    (``Bundle.members``) and the ensemble (``Bundle.ensemble_weights``), one dict per clip;
    each member reads its own waveform of the clip."""
    from ser_worker.features.study import extract

    settings = bundle.feature_settings
    return predict_features(
        bundle,
        [extract(clip.cnn, settings) for clip in clips],
        encoder_vectors=encoder_vectors(bundle, [clip.encoder for clip in clips]),
        batch_size=batch_size,
        adapt=adapt,
    )


def predict_waveforms(
    bundle: Bundle,
    waveforms: Sequence[np.ndarray],
    *,
    untrimmed: Sequence[np.ndarray] | None = None,
    batch_size: int = 64,
) -> list[dict[str, MemberPrediction]]:
    """Predict waveforms already decoded and trimmed (float32 mono at the bundle's rate).

    For evaluation code whose clips are decoded and trimmed already: `untrimmed` holds the
    same clips before silence trimming, which the encoder's head reads;
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
    return embed(waveforms, bundle.encoder_layers, bundle.encoder_pooling)


def embed(
    waveforms: Sequence[np.ndarray],
    layers: Sequence[int] | None = None,
    pooling: str | None = None,
) -> np.ndarray:
    """The speech encoder's vectors of `layers` pooled as `pooling` (by default what new
    bundles use: speech_encoder.LAYERS and POOLING), from this process's encoder (loaded on
    first use)."""
    from ser_worker.config import get_settings
    from ser_worker.models.encoder import LAYERS, POOLING, load_encoder

    encoder = load_encoder(tuple(layers or LAYERS), get_settings().tf_threads)
    return encoder.embed(waveforms, pooling or POOLING)


def predict_features(
    bundle: Bundle,
    features_list: Sequence[ClipFeatures],
    *,
    encoder_vectors: np.ndarray | None = None,
    batch_size: int = 64,
    adapt: bool = False,
) -> list[dict[str, MemberPrediction]]:
    """Like `predict` for features (and encoder vectors) that were already computed."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    probabilities = predict_probabilities(
        bundle, features_list, encoder_vectors=encoder_vectors, batch_size=batch_size, adapt=adapt
    )
    calibration = bundle.manifest.member_calibration
    if adapt:
        weights, temperature = bundle.adapted_ensemble_weights, calibration.adapted_temperature
    else:
        weights, temperature = bundle.ensemble_weights, calibration.temperature
    probabilities[ENSEMBLE] = temperature_scaled(mix(probabilities, weights), temperature)
    labels = bundle.labels
    return [
        {
            name: MemberPrediction.from_probabilities(p[i], labels, calibration.uncertain_below)
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
    adapt: bool = False,
) -> dict[str, np.ndarray]:
    """Raw softmax outputs, (N, n_classes) per member, for evaluation code that needs arrays."""
    from ser_worker.models.registry import CNN_MEMBERS

    if adapt:
        check_adaptable(bundle, len(features_list))

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
    if adapt:
        from ser_worker.models.encoder import standardised_by_set

        probabilities[ENCODER] = bundle.adapted_head.probabilities(
            standardised_by_set(encoder_vectors)
        )
    elif bundle.encoder_head is not None:
        probabilities[ENCODER] = bundle.encoder_head.probabilities(encoder_vectors)
    return probabilities


# Why a set of clips cannot be adapted to (adaptation_refusal); the service's error codes.
CANNOT_ADAPT = "cannot_adapt"
TOO_FEW_TO_ADAPT = "too_few_to_adapt"


def adaptation_refusal(bundle: Bundle, n_clips: int) -> str | None:
    """CANNOT_ADAPT, TOO_FEW_TO_ADAPT, or None when `n_clips` clips can be adapted to."""
    from ser_worker.models.encoder import MIN_ADAPT_CLIPS

    if not bundle.can_adapt:
        return CANNOT_ADAPT
    if n_clips < MIN_ADAPT_CLIPS:
        return TOO_FEW_TO_ADAPT
    return None


def check_adaptable(bundle: Bundle, n_clips: int) -> None:
    """Raise ValueError unless `n_clips` clips can be adapted to with this bundle."""
    from ser_worker.models.encoder import MIN_ADAPT_CLIPS

    refusal = adaptation_refusal(bundle, n_clips)
    if refusal == CANNOT_ADAPT:
        raise ValueError(
            f"model version {bundle.version} has no adapted head: per-submission adaptation "
            "needs a bundle trained with one"
        )
    if refusal == TOO_FEW_TO_ADAPT:
        raise ValueError(
            f"per-submission adaptation needs at least {MIN_ADAPT_CLIPS} clips, got {n_clips}"
        )
