"""ONNX exports added to a bundle that was written without them (the shipped one, say), so its
CNNs run on onnxruntime without TensorFlow; research/add_onnx_exports.py applies it to the
shipped bundle."""

from __future__ import annotations

import io
import json
import zipfile

from ser_worker.bundle.archive import load_bundle
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
        for name, export in exports.items():
            target.writestr(manifest["models"][name]["onnx"], export)
    return buffer.getvalue()
