"""A bundle's zip: ``manifest.json``, a ``<name>.weights.h5`` per CNN and, optionally,
``encoder_head.npz``: the linear head read on the pretrained speech encoder's vectors
(ser_worker.models.encoder; the encoder's own weights come from its packages, pinned by hash in
the manifest).

Only weights are stored: architectures are rebuilt from ``ser_worker.models.cnn`` with the input
shape recorded in the manifest, so a bundle is small, carries no optimizer state and cannot
smuggle in arbitrary layers. Keras is imported lazily so that ``read_manifest`` and
``verify_bundle_bytes`` (the CLI, promotion) stay cheap.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
import zlib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ser_worker.bundle.core import Bundle, check_encoder_head
from ser_worker.bundle.manifest import (
    ENCODER_HEAD_NAME,
    MANIFEST_NAME,
    UNRECORDED_ENCODER_LAYERS,
    WEIGHTS_SUFFIX,
    BundleError,
    EncoderEntry,
    Manifest,
)

if TYPE_CHECKING:
    from ser_worker.features.study import FeatureSettings
    from ser_worker.models.encoder import LinearHead

SHIPPED_BUNDLE = "default_bundle.zip"
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError)


def shipped_bundle_bytes() -> bytes | None:
    """The bundle shipped in the package (ser_worker/data/default_bundle.zip), if it has one."""
    resource = resources.files("ser_worker") / "data" / SHIPPED_BUNDLE
    return resource.read_bytes() if resource.is_file() else None


def verify_bundle_bytes(data: bytes | None, sha256: str) -> None:
    """Raise BundleError unless `data` is the intact zip that was registered under `sha256`.

    Keras-free (the CLI promotes the shipped bundle): the checksum, the manifest, each member's
    CRC. Catches bytes damaged or lost in storage since registration.
    """
    if not data:
        raise BundleError("the model bundle is missing (no bytes stored)")
    if hashlib.sha256(data).hexdigest() != sha256:
        raise BundleError("the model bundle is corrupt: its bytes no longer match their checksum")
    read_manifest(data)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            damaged = archive.testzip()
    except _ZIP_ERRORS as error:
        raise BundleError(f"the model bundle is corrupt: {error}") from error
    if damaged is not None:
        raise BundleError(f"the model bundle is corrupt: {damaged} fails its CRC check")


def bundle_bytes(bundle: Bundle) -> bytes:
    """The bundle as zip bytes, ready for a database column or object storage."""
    manifest = Manifest.model_validate(bundle.manifest.to_dict())
    missing = set(manifest.models) - set(bundle.models)
    if missing:
        raise BundleError(f"manifest lists models that the bundle lacks: {sorted(missing)}")
    from ser_worker.models.cnn import build_model

    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="ser-bundle-") as tmp:
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            text = json.dumps(manifest.to_dict(), indent=2, sort_keys=True)
            archive.writestr(MANIFEST_NAME, text)
            for name, entry in manifest.models.items():
                # save_weights of a compiled model also writes the optimizer's slots (twice the
                # model again for Adam); an uncompiled twin writes the model weights alone.
                bare = build_model(name, tuple(entry.input_shape))
                bare.set_weights(bundle.models[name].get_weights())
                # Keras only writes weights to a real file whose name ends in .weights.h5.
                weights_path = Path(tmp) / entry.weights
                bare.save_weights(weights_path)
                archive.write(weights_path, entry.weights)
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


def read_manifest(source: str | Path | bytes) -> Manifest:
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
            for name, entry in manifest.models.items():
                weights_name = entry.weights
                try:
                    data = archive.read(weights_name)
                except KeyError:
                    raise BundleError(f"bundle has no weights file {weights_name!r}") from None
                except _ZIP_ERRORS as exc:
                    raise BundleError(f"weights {weights_name!r} are corrupt: {exc}") from exc
                weights_path = Path(tmp) / f"{name}{WEIGHTS_SUFFIX}"
                weights_path.write_bytes(data)
                model = build_model(name, tuple(entry.input_shape))
                try:
                    model.load_weights(weights_path)
                except Exception as exc:  # h5py and Keras raise many unrelated types
                    raise BundleError(f"cannot load weights for {name}: {exc}") from exc
                bundle.models[name] = model
        if manifest.encoder is not None:
            bundle.encoder_head = _encoder_head_from(archive, manifest.encoder)
    return bundle


def _encoder_head_from(archive: zipfile.ZipFile, entry: EncoderEntry) -> LinearHead:
    from ser_worker.models import encoder as speech_encoder

    if entry.weights_sha256 != speech_encoder.MODEL_SHA256:
        raise BundleError(
            "the bundle's encoder head was fitted on other encoder weights "
            f"({entry.weights_sha256}) than this code loads ({speech_encoder.MODEL_SHA256})"
        )
    try:
        head = speech_encoder.LinearHead.from_bytes(archive.read(entry.head))
    except KeyError:
        raise BundleError(f"bundle has no encoder head {entry.head!r}") from None
    except Exception as exc:  # zip, zlib and numpy raise many unrelated types
        raise BundleError(f"the encoder head is corrupt: {exc}") from exc
    try:
        recorded = "layers" in entry.model_fields_set
        layers = speech_encoder.check_layers(
            entry.layers if recorded else UNRECORDED_ENCODER_LAYERS
        )
    except (TypeError, ValueError) as exc:
        raise BundleError(f"the bundle's encoder layers are not usable: {exc}") from exc
    check_encoder_head(head, layers)
    return head


def _open_zip(source: str | Path | bytes) -> zipfile.ZipFile:
    try:
        if isinstance(source, bytes | bytearray | memoryview):
            return zipfile.ZipFile(io.BytesIO(bytes(source)))
        return zipfile.ZipFile(Path(source))
    except FileNotFoundError:
        raise BundleError(f"bundle not found: {source}") from None
    except _ZIP_ERRORS as exc:
        raise BundleError(f"not a readable bundle zip: {exc}") from exc


def _manifest_from(archive: zipfile.ZipFile) -> Manifest:
    try:
        manifest = json.loads(archive.read(MANIFEST_NAME))
    except KeyError:
        raise BundleError(f"bundle has no {MANIFEST_NAME}") from None
    except _ZIP_ERRORS as exc:
        raise BundleError(f"{MANIFEST_NAME} is corrupt: {exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{MANIFEST_NAME} is not valid JSON: {exc}") from exc
    return Manifest.model_validate(manifest)


def _check_shapes(manifest: Manifest, settings: FeatureSettings) -> None:
    # Inference shapes inputs from the feature settings, so a model built for another shape
    # would only fail at the first prediction; catch it when the bundle is loaded instead.
    from ser_worker.models.registry import input_shape

    for name, entry in manifest.models.items():
        expected = list(input_shape(name, settings))
        if list(entry.input_shape) != expected:
            raise BundleError(
                f"{name} input shape {entry.input_shape} does not match the bundle's "
                f"feature settings {expected}"
            )
