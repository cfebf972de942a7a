#!/usr/bin/env python
"""Give a stored bundle ONNX exports of its CNNs (ser_worker.bundle.onnx), in place.

    python research/add_onnx_exports.py [BUNDLE.zip]     # default: the shipped bundle

The version does not change (its hash leaves the exports out) and every other member of the
zip is copied byte for byte. The exports must predict what Keras does on the committed test
clips within 1e-4, or nothing is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "ser_worker" / "data" / "default_bundle.zip"
TOLERANCE = 1e-4


def max_difference(old: bytes, new: bytes) -> float:
    """The largest difference between Keras and onnxruntime over every CNN and test clip."""
    from ser_worker.audio import load_audio
    from ser_worker.bundle import load_bundle
    from ser_worker.bundle.core import predict_probabilities
    from ser_worker.features.study import extract

    keras_bundle, onnx_bundle = load_bundle(old, runtime="keras"), load_bundle(new, runtime="onnx")
    clips = [load_audio(p) for p in sorted((REPO / "tests" / "data").rglob("*.flac"))]
    features = [extract(y, keras_bundle.feature_settings) for y in clips]
    vectors = _zeros(keras_bundle, clips)
    want = predict_probabilities(keras_bundle, features, encoder_vectors=vectors)
    got = predict_probabilities(onnx_bundle, features, encoder_vectors=vectors)
    return max(float(np.abs(got[name] - want[name]).max()) for name in keras_bundle.models)


def _zeros(bundle, clips):
    # The encoder's head is not what is compared; vectors of the right size let the CNNs run.
    if bundle.encoder_head is None:
        return None
    return np.zeros((len(clips), bundle.encoder_head.coef.shape[1]), dtype=np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, nargs="?", default=SHIPPED)
    args = parser.parse_args(argv)
    from ser_worker.bundle import read_manifest
    from ser_worker.bundle.exports import add_exports

    old = args.bundle.read_bytes()
    new = add_exports(old)
    if new == old:
        print(f"{args.bundle}: every CNN already has an export")
        return 0
    assert read_manifest(new).version == read_manifest(old).version
    worst = max_difference(old, new)
    print(f"largest |onnxruntime - Keras| on the test clips: {worst:.2e}")
    if worst > TOLERANCE:
        print(f"over {TOLERANCE}: {args.bundle} left as it was", file=sys.stderr)
        return 1
    fd, partial = tempfile.mkstemp(dir=args.bundle.parent, suffix=".partial")
    with os.fdopen(fd, "wb") as f:
        f.write(new)
    os.chmod(partial, 0o644)
    os.replace(partial, args.bundle)
    print(f"{args.bundle}: version {read_manifest(new).version}, {len(old)} -> {len(new)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
