"""A bundle's manifest: what the zip holds, how each member reads a clip, how it was trained.

Typed with pydantic so the code reads ``manifest.models`` instead of string keys, but checked by
hand first (``check_manifest``) so a bad bundle fails with the same plain BundleError messages
as always. Keys this code does not know are kept (``extra="allow"``): a manifest read from an
older or newer bundle writes back unchanged (``to_dict``). Keras-free and librosa-free: the CLI
reads manifests.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ser_worker.labels import (
    EMOTIONS,
    ENCODER,
    ENCODER_POOLINGS,
    MODEL_NAMES,
    POOL_ALL,
    SAMPLE_RATE,
    TARGET_LUFS,
    TRIM_TOP_DB,
)

FORMAT = "ser-bundle/1"
MANIFEST_NAME = "manifest.json"
WEIGHTS_SUFFIX = ".weights.h5"
ENCODER_HEAD_NAME = "encoder_head.npz"
ADAPTED_HEAD_NAME = "encoder_head_adapted.npz"
# Bundles written before the manifest recorded the encoder's layers: their heads read the last
# block alone.
UNRECORDED_ENCODER_LAYERS = (6,)
# ... nor their pooling: every frame counted alike.
UNRECORDED_ENCODER_POOLING = POOL_ALL


class BundleError(ValueError):
    """A bundle that is missing, corrupt or not one this code can load."""


class _Entry(BaseModel):
    model_config = ConfigDict(extra="allow")


class ModelEntry(_Entry):
    input_shape: list[int]
    weights: str
    parameters: int | None = None
    # The ONNX export of the same weights (bundle.onnx), when the bundle carries one.
    onnx: str | None = None


class EncoderEntry(_Entry):
    head: str
    name: str | None = None
    weights_sha256: str | None = None
    layers: list[int] | None = None
    # How the head's vectors pool the encoder's frames (models.encoder.pooling); None: "all",
    # what every bundle before the pooling was recorded read.
    pooling: str | None = None
    window_seconds: int | float | None = None
    trimmed: bool | None = None
    head_parameters: int | None = None
    # The head read under per-submission adaptation (models.encoder.fit_adapted_head), if any.
    adapted_head: str | None = None

    @field_validator("pooling")
    @classmethod
    def _known_pooling(cls, pooling: str | None) -> str | None:
        if pooling is not None and pooling not in ENCODER_POOLINGS:
            raise ValueError(
                f"unknown encoder pooling {pooling!r}; this code knows {list(ENCODER_POOLINGS)}"
            )
        return pooling


class CnnPreprocessing(_Entry):
    trim: bool = True
    trim_top_db: int | float = TRIM_TOP_DB


class EncoderPreprocessing(_Entry):
    # The head was fitted on vectors of the clip as decoded, before silence trimming.
    trim: bool = False


LOUDNESS_METHOD = "bs1770-after-peak"


class LoudnessPreprocessing(_Entry):
    """Every member reads the clip scaled to one BS.1770 integrated loudness (ser_worker.loudness),
    before any trimming: the recording level cannot decide the emotion."""

    method: str = LOUDNESS_METHOD
    target_lufs: float = TARGET_LUFS

    @field_validator("method")
    @classmethod
    def _known_method(cls, method: str) -> str:
        if method != LOUDNESS_METHOD:
            raise ValueError(
                f"unknown loudness method {method!r}; this code knows {LOUDNESS_METHOD}"
            )
        return method


class Preprocessing(_Entry):
    """How each member reads a decoded clip. Bundles written before this was recorded (the
    shipped one, every stored one) get these defaults, which are what they were trained with:
    no loudness normalisation. What new bundles record is ``CURRENT_PREPROCESSING``."""

    sample_rate: int = SAMPLE_RATE
    # None: the clip as decoded, at whatever level it was recorded (bundles before issue #14).
    loudness: LoudnessPreprocessing | None = None
    cnn: CnnPreprocessing = CnnPreprocessing()
    encoder: EncoderPreprocessing = EncoderPreprocessing()

    @field_validator("sample_rate")
    @classmethod
    def _served_rate(cls, rate: int) -> int:
        # Every stage of this code decodes to SAMPLE_RATE; another rate cannot be served.
        if rate != SAMPLE_RATE:
            raise ValueError(
                f"bundle preprocessing at {rate} Hz; this code serves {SAMPLE_RATE} Hz"
            )
        return rate


# What every bundle trained by this code records, and what its members learn from.
CURRENT_PREPROCESSING = Preprocessing(loudness=LoudnessPreprocessing())


class Calibration(_Entry):
    """How far the ensemble's confidence can be taken at its word. The ensemble's probabilities
    are temperature-scaled (``evaluation.calibration.temperature_scaled``) with `temperature`,
    fitted on validation speakers; a clip whose best class then holds less than
    `uncertain_below` is marked uncertain. Bundles without it: temperature 1, threshold 0.5."""

    temperature: float = 1.0
    uncertain_below: float = 0.5
    # The same under per-submission adaptation, whose ensemble differs (adapted_ensemble_weights).
    adapted_temperature: float = 1.0

    @field_validator("temperature", "adapted_temperature")
    @classmethod
    def _positive(cls, value: float) -> float:
        if not value > 0:
            raise ValueError(f"temperature must be above 0, got {value}")
        return value

    @field_validator("uncertain_below")
    @classmethod
    def _probability(cls, value: float) -> float:
        if not 0 <= value <= 1:
            raise ValueError(f"uncertain_below must lie in [0, 1], got {value}")
        return value


class Manifest(_Entry):
    format: str
    version: str
    labels: list[str]
    models: dict[str, ModelEntry]
    feature_settings: dict[str, Any]
    normalizer: dict[str, Any]
    created_at: str | None = None
    split: dict[str, Any] = {}
    history: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    training_data: dict[str, Any] = {}
    licences: list[str] = []
    code_version: dict[str, Any] = {}
    notes: str = ""
    encoder: EncoderEntry | None = None
    ensemble_weights: dict[str, int | float] | None = None
    expected_metrics: dict[str, Any] | None = None
    preprocessing: Preprocessing | None = None
    calibration: Calibration | None = None
    # The ensemble under per-submission adaptation; None: the adapted encoder alone, because only
    # the encoder's vectors are standardised per submission and the CNNs fail across corpora.
    adapted_ensemble_weights: dict[str, int | float] | None = None

    @classmethod
    def model_validate(cls, obj: Any, **kwargs: Any) -> Manifest:
        """A Manifest from its JSON dict; BundleError (today's messages) when it is not one."""
        if isinstance(obj, Manifest):
            return obj
        check_manifest(obj)
        try:
            return super().model_validate(obj, **kwargs)
        except ValidationError as exc:
            raise BundleError(f"invalid manifest: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The manifest as JSON-ready dict: exactly the keys it was read or made with."""
        return self.model_dump(exclude_unset=True)

    @property
    def members(self) -> tuple[str, ...]:
        """The CNNs, and the encoder's head when there is one, in the ensemble's order."""
        return (*self.models, *((ENCODER,) if self.encoder is not None else ()))

    @property
    def encoder_layers(self) -> tuple[int, ...]:
        layers = self.encoder.layers if self.encoder is not None else None
        return tuple(layers if layers is not None else UNRECORDED_ENCODER_LAYERS)

    @property
    def encoder_pooling(self) -> str:
        pooling = self.encoder.pooling if self.encoder is not None else None
        return pooling or UNRECORDED_ENCODER_POOLING

    @property
    def member_preprocessing(self) -> Preprocessing:
        return self.preprocessing if self.preprocessing is not None else Preprocessing()

    @property
    def member_calibration(self) -> Calibration:
        return self.calibration if self.calibration is not None else Calibration()


def check_manifest(manifest: Any) -> None:
    """The rules a manifest must meet, with a message that says which one it breaks."""
    if not isinstance(manifest, dict):
        raise BundleError("manifest is not a JSON object")
    if manifest.get("format") != FORMAT:
        raise BundleError(
            f"unsupported bundle format {manifest.get('format')!r}; expected {FORMAT}"
        )
    if not manifest.get("version"):
        raise BundleError("manifest has no version")
    if manifest.get("labels") != list(EMOTIONS):
        raise BundleError(
            f"bundle labels {manifest.get('labels')!r} differ from this code's {list(EMOTIONS)}"
        )
    models = manifest.get("models")
    if not isinstance(models, dict) or not models:
        raise BundleError("manifest lists no models")
    for name, entry in models.items():
        if name not in MODEL_NAMES:
            raise BundleError(f"unknown model {name!r} in manifest; expected {list(MODEL_NAMES)}")
        if not isinstance(entry, dict) or "input_shape" not in entry or "weights" not in entry:
            raise BundleError(f"manifest entry for {name} needs input_shape and weights")
    for key in ("feature_settings", "normalizer"):
        if not isinstance(manifest.get(key), dict):
            raise BundleError(f"manifest has no {key}")
    members = set(models)
    if ENCODER in manifest:
        if not isinstance(manifest[ENCODER], dict) or "head" not in manifest[ENCODER]:
            raise BundleError("manifest entry for the encoder needs its head file")
        members.add(ENCODER)
    for key in ("ensemble_weights", "adapted_ensemble_weights"):
        if manifest.get(key) is not None:
            check_ensemble_weights(manifest[key], members, key)


def check_ensemble_weights(weights: Any, members: set[str], key: str = "ensemble_weights") -> None:
    if not (
        isinstance(weights, dict)
        and set(weights) == members
        and all(isinstance(w, int | float) and w >= 0 for w in weights.values())
        and sum(weights.values()) > 0
    ):
        raise BundleError(
            f"{key} {weights!r} must give every model of the bundle a weight >= 0, not all zero"
        )
