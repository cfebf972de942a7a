"""A versioned model bundle: weights, labels, preprocessing and training record in one zip.

``Bundle.predict`` is the one place that knows each member's preprocessing. Keras and the
feature code load lazily, so reading a manifest (the CLI, promotion) stays cheap.
"""

from ser_worker.bundle.archive import (
    FORMAT,
    Bundle,
    BundleError,
    bundle_bytes,
    create_bundle,
    load_bundle,
    make_version,
    read_manifest,
    save_bundle,
    with_encoder_head,
)

__all__ = [
    "FORMAT",
    "Bundle",
    "BundleError",
    "bundle_bytes",
    "create_bundle",
    "load_bundle",
    "make_version",
    "read_manifest",
    "save_bundle",
    "with_encoder_head",
]
