"""Per-process state of a worker: TensorFlow and model bundles are loaded after the fork, once,
on first use, and kept while the process lives (a submission pins its version, so a promotion
simply makes the next submission load the new one)."""

from collections import OrderedDict

import numpy as np
from sqlalchemy.orm import Session, undefer

from ser_worker.audio import AudioLimits
from ser_worker.bundle import Bundle, load_bundle
from ser_worker.db.models import ModelVersion
from ser_worker.settings import get_settings

_BUNDLES_KEPT = 2
_bundles: OrderedDict[int, Bundle] = OrderedDict()


def bundle_for(session: Session, version_id: int) -> Bundle:
    if version_id in _bundles:
        _bundles.move_to_end(version_id)
        return _bundles[version_id]
    version = session.get(ModelVersion, version_id, options=[undefer(ModelVersion.bundle)])
    if version is None:
        raise LookupError(f"model version id {version_id} does not exist")
    bundle = load_bundle(version.bundle)
    _bundles[version_id] = bundle
    while len(_bundles) > _BUNDLES_KEPT:
        _bundles.popitem(last=False)
    return bundle


def audio_limits() -> AudioLimits:
    settings = get_settings()
    return AudioLimits(
        max_bytes=settings.max_file_bytes,
        max_duration_s=settings.max_duration_s,
        min_duration_s=settings.min_duration_s,
    )


def warm_up() -> None:
    """Configure TensorFlow's threads and compile librosa's numba kernels in this process."""
    threads = get_settings().tf_threads
    if threads:
        import os

        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    from ser_worker.features import FeatureSettings, extract

    rng = np.random.default_rng(0)
    extract(rng.standard_normal(16_000).astype(np.float32) * 0.1, FeatureSettings())
