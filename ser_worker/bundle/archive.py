"""A bundle's zip: ``manifest.json``, a ``<name>.weights.h5`` per CNN (with its ONNX export
``<name>.onnx`` in bundles written since they exist: bundle.onnx) and, optionally,
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
    ADAPTED_HEAD_NAME,
    ENCODER_HEAD_NAME,
    MANIFEST_NAME,
    UNRECORDED_ENCODER_LAYERS,
    UNRECORDED_ENCODER_POOLING,
    WEIGHTS_SUFFIX,
    BundleError,
    EncoderEntry,
    Manifest,
)

if TYPE_CHECKING:
    import keras

    from ser_worker.features.study import FeatureSettings
    from ser_worker.models.encoder import LinearHead

SHIPPED_BUNDLE = "default_bundle.zip"
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError)
# Read from the zip's directory before any member is inflated: a small zip can claim (and
# inflate to) gigabytes. Far above any real member; a bundle is about 20 MB.
MAX_MEMBER_BYTES = 256 * 2**20
MAX_MANIFEST_BYTES = 4 * 2**20
MAX_BUNDLE_BYTES = 1024 * 2**20


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
                if entry.onnx:
                    archive.writestr(entry.onnx, _export(bundle.models[name], bare))
            if bundle.encoder_head is not None:
                archive.writestr(ENCODER_HEAD_NAME, bundle.encoder_head.to_bytes())
            if bundle.adapted_head is not None:
                archive.writestr(ADAPTED_HEAD_NAME, bundle.adapted_head.to_bytes())
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


def load_bundle(source: str | Path | bytes, *, runtime: str = "auto") -> Bundle:
    """Load and validate a bundle; any problem is raised as a BundleError.

    `runtime`: "auto" runs each CNN that has an ONNX export on onnxruntime (when installed;
    TensorFlow is then never imported for it) and the others on Keras; "keras" runs all on
    Keras; "onnx" requires an export of every CNN.
    """
    from ser_worker.bundle import onnx

    if runtime not in ("auto", "keras", "onnx"):
        raise ValueError(f"runtime must be auto, keras or onnx, not {runtime!r}")
    with _open_zip(source) as archive:
        manifest = _manifest_from(archive)
        bundle = Bundle(manifest=manifest, models={})
        try:
            settings = bundle.feature_settings
            _ = bundle.normalizer
        except Exception as exc:  # from_dict of a malformed manifest can fail in many ways
            raise BundleError(f"invalid feature settings or normalizer in manifest: {exc}") from exc
        _check_shapes(manifest, settings)
        use_onnx = runtime != "keras" and (runtime == "onnx" or onnx.runtime_available())
        for name, entry in manifest.models.items():
            data = _member(archive, entry.weights, "weights")
            shape = tuple(entry.input_shape)
            if use_onnx and entry.onnx:
                _check_weights(name, data)
                export = _member(archive, entry.onnx, "ONNX export")
                bundle.models[name] = onnx.OnnxCnn(
                    name, shape, export, lambda n=name, s=shape, d=data: _keras_model(n, s, d)
                )
            elif runtime == "onnx":
                raise BundleError(f"bundle has no ONNX export of {name}")
            else:
                bundle.models[name] = _keras_model(name, shape, data)
        if manifest.encoder is not None:
            bundle.encoder_head = _encoder_head_from(archive, manifest.encoder)
            if manifest.encoder.adapted_head:
                bundle.adapted_head = _encoder_head_from(
                    archive, manifest.encoder, manifest.encoder.adapted_head
                )
    return bundle


def _member(archive: zipfile.ZipFile, filename: str, what: str) -> bytes:
    try:
        return archive.read(filename)
    except KeyError:
        raise BundleError(f"bundle has no {what} file {filename!r}") from None
    except _ZIP_ERRORS as exc:
        raise BundleError(f"{what} {filename!r} are corrupt: {exc}") from exc


def _keras_model(name: str, shape: tuple[int, ...], weights: bytes) -> keras.Model:
    from ser_worker.models.cnn import build_model

    model = build_model(name, shape)
    with tempfile.TemporaryDirectory(prefix="ser-bundle-") as tmp:
        # Keras only reads weights from a real file whose name ends in .weights.h5.
        weights_path = Path(tmp) / f"{name}{WEIGHTS_SUFFIX}"
        weights_path.write_bytes(weights)
        try:
            model.load_weights(weights_path)
        except Exception as exc:  # h5py and Keras raise many unrelated types
            raise BundleError(f"cannot load weights for {name}: {exc}") from exc
    return model


def _check_weights(name: str, weights: bytes) -> None:
    """Unread while the export serves, the weights must still be sound for when Keras needs
    them (training, re-writing the bundle): an HDF5 file with the model's weights in it."""
    import h5py

    try:
        with h5py.File(io.BytesIO(weights), "r") as f:
            if not len(f):
                raise ValueError("no weights in the file")
    except Exception as exc:  # h5py raises many unrelated types
        raise BundleError(f"cannot load weights for {name}: {exc}") from exc


def _export(model: object, bare: keras.Model) -> bytes:
    """A member's ONNX export: the one it was loaded with, or a new one of its weights."""
    from ser_worker.bundle import onnx

    if isinstance(model, onnx.OnnxCnn):
        return model.onnx_bytes
    return onnx.export_cnn(bare)


def _encoder_head_from(
    archive: zipfile.ZipFile, entry: EncoderEntry, name: str | None = None
) -> LinearHead:
    from ser_worker.models import encoder as speech_encoder

    if entry.weights_sha256 != speech_encoder.MODEL_SHA256:
        raise BundleError(
            "the bundle's encoder head was fitted on other encoder weights "
            f"({entry.weights_sha256}) than this code loads ({speech_encoder.MODEL_SHA256})"
        )
    try:
        head = speech_encoder.LinearHead.from_bytes(archive.read(name or entry.head))
    except KeyError:
        raise BundleError(f"bundle has no encoder head {name or entry.head!r}") from None
    except Exception as exc:  # zip, zlib and numpy raise many unrelated types
        raise BundleError(f"the encoder head is corrupt: {exc}") from exc
    try:
        recorded = "layers" in entry.model_fields_set
        layers = speech_encoder.check_layers(
            entry.layers if recorded else UNRECORDED_ENCODER_LAYERS
        )
    except (TypeError, ValueError) as exc:
        raise BundleError(f"the bundle's encoder layers are not usable: {exc}") from exc
    # The manifest refuses a pooling this code does not know.
    check_encoder_head(head, layers, entry.pooling or UNRECORDED_ENCODER_POOLING)
    return head


def _open_zip(source: str | Path | bytes) -> zipfile.ZipFile:
    try:
        if isinstance(source, bytes | bytearray | memoryview):
            archive = zipfile.ZipFile(io.BytesIO(bytes(source)))
        else:
            archive = zipfile.ZipFile(Path(source))
    except FileNotFoundError:
        raise BundleError(f"bundle not found: {source}") from None
    except _ZIP_ERRORS as exc:
        raise BundleError(f"not a readable bundle zip: {exc}") from exc
    try:
        _check_sizes(archive)
    except BundleError:
        archive.close()
        raise
    return archive


def _check_sizes(archive: zipfile.ZipFile) -> None:
    total = 0
    for info in archive.infolist():
        limit = MAX_MANIFEST_BYTES if info.filename == MANIFEST_NAME else MAX_MEMBER_BYTES
        if info.file_size > limit:
            raise BundleError(
                f"bundle member {info.filename!r} would inflate to {info.file_size} bytes, "
                f"over the limit of {limit}: not read"
            )
        total += info.file_size
    if total > MAX_BUNDLE_BYTES:
        raise BundleError(
            f"bundle would inflate to {total} bytes, over the limit of {MAX_BUNDLE_BYTES}: not read"
        )


def _manifest_from(archive: zipfile.ZipFile) -> Manifest:
    try:
        # NaN and Infinity are not JSON: an ensemble weight of Infinity would mix into NaN.
        manifest = json.loads(archive.read(MANIFEST_NAME), parse_constant=_no_constant)
    except KeyError:
        raise BundleError(f"bundle has no {MANIFEST_NAME}") from None
    except _ZIP_ERRORS as exc:
        raise BundleError(f"{MANIFEST_NAME} is corrupt: {exc}") from exc
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise BundleError(f"{MANIFEST_NAME} is not valid JSON: {exc}") from exc
    except RecursionError:
        raise BundleError(f"{MANIFEST_NAME} is nested too deeply to be a manifest") from None
    try:
        return Manifest.model_validate(manifest)
    except RecursionError:
        raise BundleError(f"{MANIFEST_NAME} is nested too deeply to be a manifest") from None


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a manifest may hold")


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
