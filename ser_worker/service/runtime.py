"""Per-process state of a worker: TensorFlow and model bundles are loaded after the fork, once,
and kept while the process lives (a submission pins its version, so a promotion simply makes the
next submission load the new one).

Right after the fork, `warm_up` (worker_process_init) sets the process's thread budget and
hands the slow part (librosa's and TensorFlow's imports, the active bundle, Keras tracing) to a
background thread: Celery kills a child that takes longer than worker_proc_alive_timeout (4 s)
to report for work, and those imports alone take 3-7 s on a busy host. A task that arrives
before the warm-up is done simply waits for the same imports and the same bundle lock.
"""

import logging
import os
import threading
import time
from collections import OrderedDict

import numpy as np
from sqlalchemy.orm import Session, undefer

from ser_worker.audio import AudioLimits
from ser_worker.bundle import Bundle, load_bundle
from ser_worker.config import get_settings
from ser_worker.labels import SAMPLE_RATE
from ser_worker.service.db.models import ModelVersion

log = logging.getLogger(__name__)

_BUNDLES_KEPT = 2
_bundles: OrderedDict[int, Bundle] = OrderedDict()
# One loader at a time: the warm-up thread and a task may ask for the same version at once.
_bundles_lock = threading.Lock()


def bundle_for(session: Session, version_id: int) -> Bundle:
    with _bundles_lock:
        if version_id in _bundles:
            _bundles.move_to_end(version_id)
            return _bundles[version_id]
        version = session.get(ModelVersion, version_id, options=[undefer(ModelVersion.bundle)])
        if version is None:
            raise LookupError(f"model version id {version_id} does not exist")
        bundle = load_bundle(version.bundle)
        _trace(bundle)
        _bundles[version_id] = bundle
        while len(_bundles) > _BUNDLES_KEPT:
            _bundles.popitem(last=False)
        return bundle


def _trace(bundle: Bundle) -> None:
    """Trace each model's predict function, and load the speech encoder, before the first real
    batch.

    Keras traces it for the first batch shape it sees and, on the second (reduce_retracing),
    once more with the batch axis left open: that function serves every later size. Two tiny
    batches get there cheaply, so no task pays 0.3-1 s of tracing in the middle of a
    submission.
    """
    from ser_worker.models.cnn import input_shape

    settings = bundle.feature_settings
    for name, model in bundle.models.items():
        shape = input_shape(name, settings)
        for size in (1, 2):
            model.predict_on_batch(np.zeros((size, *shape), dtype=np.float32))
    if bundle.encoder_head is not None:
        from ser_worker.bundle.predict import encoder_vectors

        # The speech encoder loads once per process (about 1 s: 145 MB read and hash-checked).
        encoder_vectors(bundle, [np.zeros(settings.sample_rate, dtype=np.float32)])


def audio_limits() -> AudioLimits:
    return AudioLimits.from_settings()


def configure_threads() -> None:
    """This process's thread budget; call it before TensorFlow is imported.

    TensorFlow reads TF_NUM_INTRAOP_THREADS when it creates its thread pools (SER_TF_THREADS; 0
    leaves it to TensorFlow). numpy's BLAS does one small product per clip (the mel filter bank)
    and gets one thread: its default pool of one thread per core spends more on synchronisation
    than it saves, and with a worker process per core it competes with the other processes
    (feature extraction measured 15 ms instead of 3 ms per clip on a busy 2-core host).
    """
    threads = get_settings().tf_threads
    if threads:
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def warm_features() -> None:
    """Import librosa's lazily loaded parts and compile its numba kernels (~1-3 s)."""
    from ser_worker.features.study import FeatureSettings, extract

    rng = np.random.default_rng(0)
    extract(rng.standard_normal(SAMPLE_RATE).astype(np.float32) * 0.1, FeatureSettings())


def warm_models() -> None:
    """Import TensorFlow/Keras, and load and trace the active model version if there is one."""
    import keras  # noqa: F401

    from ser_worker.service import store
    from ser_worker.service.db.session import session_scope

    with session_scope() as session:
        active = store.active_version(session)
        if active is not None:
            bundle_for(session, active.id)


def _warm_in_background() -> None:
    started = time.perf_counter()
    try:
        warm_features()
        warm_models()
        log.info("worker warm-up done in %.1f s", time.perf_counter() - started)
    except Exception:  # a warm-up problem must not kill the worker; the task will report it
        log.warning("worker warm-up failed; the first task loads what it needs", exc_info=True)


def warm_up(*, background: bool = True) -> None:
    """Prepare a worker process right after the fork (Celery's worker_process_init).

    Sets the thread budget now; librosa, TensorFlow and the active bundle are loaded in a
    daemon thread (background=True) so that the child reports for work at once. With
    background=False only librosa is warmed, in the calling thread.
    """
    configure_threads()
    if background:
        threading.Thread(target=_warm_in_background, name="ser-warm-up", daemon=True).start()
    else:
        warm_features()
