"""The serving path before the encoder and the CNNs moved off it, as a Celery app for the
end-to-end comparison (`service_speedup_1_worker`): `celery -A benchmarks.old_path worker`.

The same worker, tasks and bundle as the product's, with two choices put back: the speech encoder
on CTranslate2 (one model per pooled block, so blocks 1-3 run twice) and both CNNs on
Keras/TensorFlow instead of their ONNX exports. Both backends are still the product's own code
(SpeechEncoder's CTRANSLATE2, load_bundle's runtime="keras"); only which one a worker picks is
changed here, in the benchmark, so that no product setting exists just to be slower.
"""

from __future__ import annotations

import functools

from ser_worker.bundle import archive
from ser_worker.models import encoder
from ser_worker.service import runtime

# bundle.core.embed looks load_encoder up in the package at each call; runtime imported
# load_bundle by name when it was first imported, above.
encoder.load_encoder = functools.partial(encoder.load_encoder, backend=encoder.CTRANSLATE2)
runtime.load_bundle = functools.partial(archive.load_bundle, runtime="keras")

from ser_worker.service.celery_app import app  # noqa: E402

__all__ = ["app"]
