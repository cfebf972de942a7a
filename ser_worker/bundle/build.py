"""How a new bundle is made: the manifest assembled for freshly trained models, and the version
that names it (creation time plus a hash of the weights and the manifest).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ser_worker.bundle.core import Bundle, check_encoder_head
from ser_worker.bundle.manifest import (
    ADAPTED_HEAD_NAME,
    CURRENT_PREPROCESSING,
    ENCODER_HEAD_NAME,
    FORMAT,
    WEIGHTS_SUFFIX,
    BundleError,
    Calibration,
    check_ensemble_weights,
)
from ser_worker.bundle.onnx import ONNX_SUFFIX, exporter_available
from ser_worker.labels import EMOTIONS, ENCODER, MODEL_NAMES

if TYPE_CHECKING:
    import keras

    from ser_worker.features.study import FeatureSettings, Normalizer
    from ser_worker.models.encoder import LinearHead


def create_bundle(
    models: dict[str, keras.Model],
    *,
    feature_settings: FeatureSettings,
    normalizer: Normalizer,
    split: dict | None = None,
    history: dict | None = None,
    metrics: dict | None = None,
    training_data: dict | None = None,
    licences: list[str] | None = None,
    ensemble_weights: dict[str, float] | None = None,
    encoder_head: LinearHead | None = None,
    encoder_layers: Sequence[int] | None = None,
    encoder_pooling: str | None = None,
    adapted_head: LinearHead | None = None,
    calibration: Calibration | None = None,
    notes: str = "",
    created_at: datetime | None = None,
) -> Bundle:
    """Assemble the manifest for freshly trained models and give the bundle its version.

    The version is the creation time plus a hash of the weights and the manifest, so two
    trainings started in the same second still get different versions.
    """
    from ser_worker.models.registry import input_shape

    unknown = set(models) - set(MODEL_NAMES)
    if not models or unknown:
        raise BundleError(f"a bundle needs models from {list(MODEL_NAMES)}, got {list(models)}")
    created_at = created_at or datetime.now(UTC)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": None,
        "created_at": created_at.isoformat(timespec="seconds"),
        "labels": list(EMOTIONS),
        "models": {
            name: {
                "input_shape": list(input_shape(name, feature_settings)),
                "weights": f"{name}{WEIGHTS_SUFFIX}",
                "parameters": int(model.count_params()),
                # Written by bundle_bytes when the environment can export (bundle.onnx).
                **({"onnx": f"{name}{ONNX_SUFFIX}"} if exporter_available() else {}),
            }
            for name, model in sorted(models.items())
        },
        "feature_settings": feature_settings.to_dict(),
        "normalizer": normalizer.to_dict(),
        "preprocessing": _preprocessing(),
        "split": split or {},
        "history": history or {},
        "metrics": metrics or {},
        "training_data": training_data or {},
        "licences": list(licences or []),
        "code_version": code_version(),
        "notes": notes,
    }
    members = set(models)
    if encoder_head is not None:
        manifest[ENCODER] = _encoder_entry(encoder_head, encoder_layers, encoder_pooling)
        members.add(ENCODER)
        if adapted_head is not None:
            entry = manifest[ENCODER]
            check_encoder_head(adapted_head, tuple(entry["layers"]), entry["pooling"])
            manifest[ENCODER]["adapted_head"] = ADAPTED_HEAD_NAME
    if ensemble_weights is not None:
        # Part of the version hash: the weights change what the ensemble predicts.
        check_ensemble_weights(ensemble_weights, members)
        manifest["ensemble_weights"] = dict(ensemble_weights)
    if calibration is not None:
        # Part of the version hash too: the temperature changes the ensemble's probabilities.
        manifest["calibration"] = calibration.model_dump()
    for name, model in models.items():
        expected = tuple(manifest["models"][name]["input_shape"])
        if tuple(model.input_shape[1:]) != expected:
            raise BundleError(
                f"{name} takes input {model.input_shape[1:]} "
                f"but the feature settings give {expected}"
            )
    adapted_head = adapted_head if encoder_head is not None else None
    heads = [head for head in (encoder_head, adapted_head) if head is not None]
    manifest["version"] = make_version(created_at, _content_hash(manifest, models, heads))
    return Bundle(
        manifest=manifest, models=dict(models), encoder_head=encoder_head, adapted_head=adapted_head
    )


def _content_hash(
    manifest: dict[str, Any], models: dict[str, keras.Model], heads: Sequence[LinearHead]
) -> str:
    """sha256 of the manifest (its version still None) and every weight, in a fixed order.

    The ONNX exports are left out: they are derived from the weights hashed here, and adding
    them to a stored bundle (bundle.exports.add_exports) must not change its version.
    """
    exportless = {
        **manifest,
        "models": {
            name: {key: value for key, value in entry.items() if key != "onnx"}
            for name, entry in manifest["models"].items()
        },
    }
    digest = hashlib.sha256(_canonical_json(exportless))
    for name in sorted(models):
        for array in models[name].get_weights():
            digest.update(array.tobytes())
    for head in heads:
        digest.update(head.to_bytes())
    return digest.hexdigest()


def _preprocessing() -> dict[str, Any]:
    """What this code does to a clip for each member, recorded so later code repeats it."""
    return CURRENT_PREPROCESSING.model_dump()


def _encoder_entry(
    head: LinearHead, layers: Sequence[int] | None, pooling: str | None
) -> dict[str, Any]:
    from ser_worker.models import encoder as speech_encoder

    layers = speech_encoder.check_layers(layers or speech_encoder.LAYERS)
    pooling = speech_encoder.check_pooling(pooling or speech_encoder.POOLING)
    check_encoder_head(head, layers, pooling)
    return {
        "name": speech_encoder.ENCODER_NAME,
        "weights_sha256": speech_encoder.MODEL_SHA256,
        "layers": list(layers),
        "pooling": pooling,
        "window_seconds": speech_encoder.WINDOW_SECONDS,
        # The head was fitted on vectors of the decoded clip before silence trimming.
        "trimmed": False,
        "head": ENCODER_HEAD_NAME,
        "head_parameters": int(head.coef.size + head.intercept.size),
    }


def with_encoder_head(
    bundle: Bundle,
    head: LinearHead,
    ensemble_weights: dict[str, float],
    *,
    encoder_layers: Sequence[int] | None = None,
    encoder_pooling: str | None = None,
    split: dict | None = None,
    training_data: dict | None = None,
    adapted_head: LinearHead | None = None,
    calibration: Calibration | None = None,
    notes: str | None = None,
) -> Bundle:
    """A new version: the bundle's CNNs and training record, plus the speech encoder's head
    (and the ensemble's calibration, which the head changes)."""
    from ser_worker.models.encoder import LICENCE

    manifest = bundle.manifest
    licences = list(manifest.licences)
    return create_bundle(
        bundle.models,
        feature_settings=bundle.feature_settings,
        normalizer=bundle.normalizer,
        split=split if split is not None else manifest.split,
        history=manifest.history,
        metrics=manifest.metrics,
        training_data=manifest.training_data | (training_data or {}),
        licences=licences + ([LICENCE] if LICENCE not in licences else []),
        ensemble_weights=ensemble_weights,
        encoder_head=head,
        encoder_layers=encoder_layers,
        encoder_pooling=encoder_pooling,
        adapted_head=adapted_head,
        calibration=calibration,
        notes=notes if notes is not None else manifest.notes,
    )


def make_version(created_at: datetime, content_hash: str) -> str:
    """``YYYYmmddTHHMMSSZ-<8 hex>``: sorts by time, unique by content."""
    stamp = created_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{content_hash[:8]}"


def code_version() -> dict[str, str | None]:
    try:
        package = metadata.version("ser")
    except metadata.PackageNotFoundError:
        package = None
    return {"ser": package, "git_commit": _git_commit()}


def _git_commit() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
