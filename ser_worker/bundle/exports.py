"""What can be added to a stored bundle without changing its version: ONNX exports of its CNNs
(research/add_onnx_exports.py), and the expected figures of its recipe (research.default_model
attach). Neither is part of the version's hash; every other member is copied byte for byte."""

from __future__ import annotations

import io
import json
import zipfile

from ser_worker.bundle.archive import load_bundle, read_manifest
from ser_worker.bundle.manifest import MANIFEST_NAME, Manifest
from ser_worker.bundle.onnx import ONNX_SUFFIX, export_cnn


def add_exports(data: bytes) -> bytes:
    """The bundle `data` with an ONNX export of each CNN that lacks one.

    Every other member of the zip is copied byte for byte; the manifest gains the ``onnx``
    entries and nothing else, so the version (whose hash leaves the exports out: they are
    derived from the weights it hashes) stays the same.
    """
    bundle = load_bundle(data, runtime="keras")
    manifest = bundle.manifest.to_dict()
    exports: dict[str, bytes] = {}
    for name, entry in manifest["models"].items():
        if not entry.get("onnx"):
            exports[name] = export_cnn(bundle.models[name])
            entry["onnx"] = f"{name}{ONNX_SUFFIX}"
    if not exports:
        return data
    return _rewritten(
        data, manifest, {manifest["models"][n]["onnx"]: e for n, e in exports.items()}
    )


def with_expected_metrics(data: bytes, expected: dict) -> bytes:
    """The bundle `data` with `expected` as its ``expected_metrics`` (figures of separate runs
    of its recipe, outside its version's hash); nothing else changes."""
    manifest = read_manifest(data).to_dict() | {"expected_metrics": expected}
    return _rewritten(data, manifest, {})


def _rewritten(data: bytes, manifest: dict, added: dict[str, bytes]) -> bytes:
    Manifest.model_validate(manifest)
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(data)) as source,
        zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as target,
    ):
        for info in source.infolist():
            if info.filename == MANIFEST_NAME:
                target.writestr(info, json.dumps(manifest, indent=2, sort_keys=True))
            else:
                target.writestr(info, source.read(info))
        for filename, content in added.items():
            target.writestr(filename, content)
    return buffer.getvalue()
