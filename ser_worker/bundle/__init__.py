"""A versioned model bundle: weights, labels, preprocessing and training record in one zip.

``Bundle.predict`` is the one place that knows each member's preprocessing. ``manifest``: the
typed manifest; ``archive``: zip I/O; ``core``: the loaded Bundle; ``build``: a new bundle and
its version; ``onnx``: the CNNs' ONNX exports, which let inference run without TensorFlow.
Keras and the feature code load lazily, so reading a manifest (the CLI, promotion) stays cheap.
"""

from ser_worker.bundle.archive import (
    bundle_bytes,
    load_bundle,
    read_manifest,
    save_bundle,
    shipped_bundle_bytes,
    verify_bundle_bytes,
)
from ser_worker.bundle.build import create_bundle, make_version, with_encoder_head
from ser_worker.bundle.core import Bundle
from ser_worker.bundle.manifest import FORMAT, BundleError, Manifest
from ser_worker.bundle.records import MemberPrediction, PreparedClip

__all__ = [
    "FORMAT",
    "Bundle",
    "BundleError",
    "Manifest",
    "MemberPrediction",
    "PreparedClip",
    "bundle_bytes",
    "create_bundle",
    "load_bundle",
    "make_version",
    "read_manifest",
    "save_bundle",
    "shipped_bundle_bytes",
    "verify_bundle_bytes",
    "with_encoder_head",
]
