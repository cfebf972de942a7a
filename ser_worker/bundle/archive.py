"""A versioned model bundle: one zip with ``manifest.json``, a ``<name>.weights.h5`` per CNN and,
optionally, ``encoder_head.npz``: the linear head read on the pretrained speech encoder's
vectors (ser_worker.models.encoder; the encoder's own weights come from its packages, pinned by
hash in the manifest).

Only weights are stored: architectures are rebuilt from ``ser_worker.models.cnn`` with the input
shape recorded in the manifest, so a bundle is small, carries no optimizer state and cannot
smuggle in arbitrary layers. Keras and the feature code are imported lazily so that
``read_manifest`` (used by the CLI and the promotion logic) stays cheap.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ser_worker.labels import EMOTIONS, ENCODER, MODEL_NAMES

if TYPE_CHECKING:
    import keras

    from ser_worker.features.study import FeatureSettings, Normalizer
    from ser_worker.models.encoder import LinearHead

FORMAT = "ser-bundle/1"
MANIFEST_NAME = "manifest.json"
WEIGHTS_SUFFIX = ".weights.h5"
ENCODER_HEAD_NAME = "encoder_head.npz"
# Bundles written before the manifest recorded the encoder's layers: their heads read the last
# block alone.
UNRECORDED_ENCODER_LAYERS = (6,)


class BundleError(ValueError):
    """A bundle that is missing, corrupt or not one this code can load."""


@dataclass
class Bundle:
    manifest: dict
    models: dict[str, keras.Model]
    encoder_head: LinearHead | None = None

    @property
    def members(self) -> tuple[str, ...]:
        """What the ensemble averages: the CNNs, and the encoder's head when there is one."""
        return (*self.models, *((ENCODER,) if self.encoder_head is not None else ()))

    @property
    def encoder_layers(self) -> tuple[int, ...]:
        """The encoder blocks whose pooled outputs the head reads (see speech_encoder.LAYERS)."""
        return tuple(self.manifest.get(ENCODER, {}).get("layers", UNRECORDED_ENCODER_LAYERS))

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.manifest["labels"])

    @property
    def ensemble_weights(self) -> dict[str, float]:
        """Each model's share of the ensemble, summing to 1; equal unless the manifest says."""
        weights = self.manifest.get("ensemble_weights") or dict.fromkeys(self.members, 1.0)
        total = sum(weights[name] for name in self.members)
        return {name: weights[name] / total for name in self.members}

    @cached_property
    def feature_settings(self) -> FeatureSettings:
        from ser_worker.features.study import FeatureSettings

        return FeatureSettings.from_dict(self.manifest["feature_settings"])

    @cached_property
    def normalizer(self) -> Normalizer:
        from ser_worker.features.study import Normalizer

        return Normalizer.from_dict(self.manifest["normalizer"])


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
    notes: str = "",
    created_at: datetime | None = None,
) -> Bundle:
    """Assemble the manifest for freshly trained models and give the bundle its version.

    The version is the creation time plus a hash of the weights and the manifest, so two
    trainings started in the same second still get different versions.
    """
    from ser_worker.models.cnn import input_shape

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
            }
            for name, model in sorted(models.items())
        },
        "feature_settings": feature_settings.to_dict(),
        "normalizer": normalizer.to_dict(),
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
        from ser_worker.models import encoder as speech_encoder

        layers = speech_encoder.check_layers(encoder_layers or speech_encoder.LAYERS)
        _check_encoder_head(encoder_head, layers)
        manifest[ENCODER] = {
            "name": speech_encoder.ENCODER_NAME,
            "weights_sha256": speech_encoder.MODEL_SHA256,
            "layers": list(layers),
            "window_seconds": speech_encoder.WINDOW_SECONDS,
            # The head was fitted on vectors of the decoded clip before silence trimming.
            "trimmed": False,
            "head": ENCODER_HEAD_NAME,
            "head_parameters": int(encoder_head.coef.size + encoder_head.intercept.size),
        }
        members.add(ENCODER)
    if ensemble_weights is not None:
        # Part of the version hash: the weights change what the ensemble predicts.
        _check_ensemble_weights(ensemble_weights, members)
        manifest["ensemble_weights"] = dict(ensemble_weights)
    for name, model in models.items():
        expected = tuple(manifest["models"][name]["input_shape"])
        if tuple(model.input_shape[1:]) != expected:
            raise BundleError(
                f"{name} takes input {model.input_shape[1:]} "
                f"but the feature settings give {expected}"
            )
    digest = hashlib.sha256(_canonical_json(manifest))
    for name in sorted(models):
        for array in models[name].get_weights():
            digest.update(array.tobytes())
    if encoder_head is not None:
        digest.update(encoder_head.to_bytes())
    manifest["version"] = make_version(created_at, digest.hexdigest())
    return Bundle(manifest=manifest, models=dict(models), encoder_head=encoder_head)


def with_encoder_head(
    bundle: Bundle,
    head: LinearHead,
    ensemble_weights: dict[str, float],
    *,
    encoder_layers: Sequence[int] | None = None,
    split: dict | None = None,
    training_data: dict | None = None,
    notes: str | None = None,
) -> Bundle:
    """A new version: the bundle's CNNs and training record, plus the speech encoder's head."""
    from ser_worker.models.encoder import LICENCE

    manifest = bundle.manifest
    licences = list(manifest["licences"])
    return create_bundle(
        bundle.models,
        feature_settings=bundle.feature_settings,
        normalizer=bundle.normalizer,
        split=split if split is not None else manifest["split"],
        history=manifest["history"],
        metrics=manifest["metrics"],
        training_data=manifest["training_data"] | (training_data or {}),
        licences=licences + ([LICENCE] if LICENCE not in licences else []),
        ensemble_weights=ensemble_weights,
        encoder_head=head,
        encoder_layers=encoder_layers,
        notes=notes if notes is not None else manifest["notes"],
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


def bundle_bytes(bundle: Bundle) -> bytes:
    """The bundle as zip bytes, ready for a database column or object storage."""
    _check_manifest(bundle.manifest)
    missing = set(bundle.manifest["models"]) - set(bundle.models)
    if missing:
        raise BundleError(f"manifest lists models that the bundle lacks: {sorted(missing)}")
    from ser_worker.models.cnn import build_model

    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="ser-bundle-") as tmp:
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(MANIFEST_NAME, json.dumps(bundle.manifest, indent=2, sort_keys=True))
            for name, entry in bundle.manifest["models"].items():
                # save_weights of a compiled model also writes the optimizer's slots (twice the
                # model again for Adam); an uncompiled twin writes the model weights alone.
                bare = build_model(name, tuple(entry["input_shape"]))
                bare.set_weights(bundle.models[name].get_weights())
                # Keras only writes weights to a real file whose name ends in .weights.h5.
                weights_path = Path(tmp) / entry["weights"]
                bare.save_weights(weights_path)
                archive.write(weights_path, entry["weights"])
            if bundle.encoder_head is not None:
                archive.writestr(ENCODER_HEAD_NAME, bundle.encoder_head.to_bytes())
    return buffer.getvalue()


def save_bundle(bundle: Bundle, path: str | Path) -> Path:
    """Write the bundle atomically: a reader never sees a half-written zip."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = bundle_bytes(bundle)
    # A unique temporary name in the target folder: the final rename is atomic, and two
    # writers of the same path cannot interleave their bytes.
    fd, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        # mkstemp makes the file private; a bundle is read by other worker users too.
        os.chmod(partial, 0o644)
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    return path


def read_manifest(source: str | Path | bytes) -> dict:
    """The validated manifest of a bundle, without loading Keras or the weights."""
    with _open_zip(source) as archive:
        return _manifest_from(archive)


def load_bundle(source: str | Path | bytes) -> Bundle:
    """Load and validate a bundle; any problem is raised as a BundleError."""
    from ser_worker.models.cnn import build_model

    with _open_zip(source) as archive:
        manifest = _manifest_from(archive)
        bundle = Bundle(manifest=manifest, models={})
        try:
            settings = bundle.feature_settings
            _ = bundle.normalizer
        except Exception as exc:  # from_dict of a malformed manifest can fail in many ways
            raise BundleError(f"invalid feature settings or normalizer in manifest: {exc}") from exc
        _check_shapes(manifest, settings)
        with tempfile.TemporaryDirectory(prefix="ser-bundle-") as tmp:
            for name, entry in manifest["models"].items():
                weights_name = entry["weights"]
                try:
                    data = archive.read(weights_name)
                except KeyError:
                    raise BundleError(f"bundle has no weights file {weights_name!r}") from None
                except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
                    raise BundleError(f"weights {weights_name!r} are corrupt: {exc}") from exc
                weights_path = Path(tmp) / f"{name}{WEIGHTS_SUFFIX}"
                weights_path.write_bytes(data)
                model = build_model(name, tuple(entry["input_shape"]))
                try:
                    model.load_weights(weights_path)
                except Exception as exc:  # h5py and Keras raise many unrelated types
                    raise BundleError(f"cannot load weights for {name}: {exc}") from exc
                bundle.models[name] = model
        if ENCODER in manifest:
            bundle.encoder_head = _encoder_head_from(archive, manifest[ENCODER])
    return bundle


def _encoder_head_from(archive: zipfile.ZipFile, entry: dict) -> LinearHead:
    from ser_worker.models import encoder as speech_encoder

    if entry.get("weights_sha256") != speech_encoder.MODEL_SHA256:
        raise BundleError(
            "the bundle's encoder head was fitted on other encoder weights "
            f"({entry.get('weights_sha256')}) than this code loads ({speech_encoder.MODEL_SHA256})"
        )
    try:
        head = speech_encoder.LinearHead.from_bytes(archive.read(entry["head"]))
    except KeyError:
        raise BundleError(f"bundle has no encoder head {entry['head']!r}") from None
    except Exception as exc:  # zip, zlib and numpy raise many unrelated types
        raise BundleError(f"the encoder head is corrupt: {exc}") from exc
    try:
        layers = speech_encoder.check_layers(entry.get("layers", UNRECORDED_ENCODER_LAYERS))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"the bundle's encoder layers are not usable: {exc}") from exc
    _check_encoder_head(head, layers)
    return head


def _check_encoder_head(head: LinearHead, layers: tuple[int, ...]) -> None:
    from ser_worker.models.encoder import embedding_size

    if head.labels != EMOTIONS or head.coef.shape != (len(EMOTIONS), embedding_size(layers)):
        raise BundleError(
            f"the encoder head does not map vectors of encoder layers {list(layers)} "
            f"to {list(EMOTIONS)}"
        )


def _open_zip(source: str | Path | bytes) -> zipfile.ZipFile:
    try:
        if isinstance(source, bytes | bytearray | memoryview):
            return zipfile.ZipFile(io.BytesIO(bytes(source)))
        return zipfile.ZipFile(Path(source))
    except FileNotFoundError:
        raise BundleError(f"bundle not found: {source}") from None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
        raise BundleError(f"not a readable bundle zip: {exc}") from exc


def _manifest_from(archive: zipfile.ZipFile) -> dict:
    try:
        manifest = json.loads(archive.read(MANIFEST_NAME))
    except KeyError:
        raise BundleError(f"bundle has no {MANIFEST_NAME}") from None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as exc:
        raise BundleError(f"{MANIFEST_NAME} is corrupt: {exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{MANIFEST_NAME} is not valid JSON: {exc}") from exc
    _check_manifest(manifest)
    return manifest


def _check_manifest(manifest: Any) -> None:
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
    if manifest.get("ensemble_weights") is not None:
        _check_ensemble_weights(manifest["ensemble_weights"], members)


def _check_ensemble_weights(weights: Any, members: set[str]) -> None:
    if not (
        isinstance(weights, dict)
        and set(weights) == members
        and all(isinstance(w, int | float) and w >= 0 for w in weights.values())
        and sum(weights.values()) > 0
    ):
        raise BundleError(
            f"ensemble_weights {weights!r} must give every model of the bundle a weight >= 0, "
            "not all zero"
        )


def _check_shapes(manifest: dict, settings: FeatureSettings) -> None:
    # Inference shapes inputs from the feature settings, so a model built for another shape
    # would only fail at the first prediction; catch it when the bundle is loaded instead.
    from ser_worker.models.cnn import input_shape

    for name, entry in manifest["models"].items():
        expected = list(input_shape(name, settings))
        if list(entry["input_shape"]) != expected:
            raise BundleError(
                f"{name} input shape {entry['input_shape']} does not match the bundle's "
                f"feature settings {expected}"
            )


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
