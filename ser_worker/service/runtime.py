"""Per-process state of a worker: TensorFlow and model bundles are loaded after the fork, once,
and kept while the process lives (a submission pins its version, so a promotion simply makes the
next submission load the new one).

Right after the fork, `warm_up` (worker_process_init) sets the process's thread budget and
hands the slow part (the active bundle, its preprocessing's imports, the speech encoder's graph,
TensorFlow where a CNN has no ONNX export) to a background thread: Celery kills a child that takes
longer than worker_proc_alive_timeout (4 s) to report for work, and that part alone takes 2-7 s on
a busy host. A task that arrives before the warm-up is done simply waits for the same imports and
the same bundle lock.
"""

from __future__ import annotations

import dataclasses
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.orm import Session, undefer

from ser_worker.bundle import Bundle, load_bundle
from ser_worker.config import get_settings
from ser_worker.labels import SAMPLE_RATE
from ser_worker.service.db.models import ModelVersion

if TYPE_CHECKING:  # ser_worker.audio loads librosa: not for the CLI's start-up
    from ser_worker.audio import AudioLimits

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
    """Trace each model's predict function, load the speech encoder and import what the bundle's
    preprocessing needs (pyloudnorm loads scipy.signal: about 1 s), before the first real batch.

    Keras traces it for the first batch shape it sees and, on the second (reduce_retracing),
    once more with the batch axis left open: that function serves every later size. Two tiny
    batches get there cheaply, so no task pays 0.3-1 s of tracing in the middle of a
    submission.
    """
    from ser_worker.models.registry import input_shape

    settings = bundle.feature_settings
    noise = np.random.default_rng(0).standard_normal(settings.sample_rate).astype(np.float32)
    # One second of noise passes whatever duration limits this host configured.
    limits = dataclasses.replace(audio_limits(), min_duration_s=0.0, max_duration_s=2.0)
    bundle.prepare(noise * np.float32(0.1), settings.sample_rate, limits)
    for name, model in bundle.models.items():
        shape = input_shape(name, settings)
        for size in (1, 2):
            model.predict_on_batch(np.zeros((size, *shape), dtype=np.float32))
    if bundle.encoder_head is not None:
        from ser_worker.bundle.core import encoder_vectors

        # The speech encoder loads once per process: 0.1-0.2 s with its graph cached under
        # SER_DATA_DIR, about 1 s where it is first built from the 145 MB of pinned weights.
        encoder_vectors(bundle, [np.zeros(settings.sample_rate, dtype=np.float32)])


def audio_limits() -> AudioLimits:
    from ser_worker.audio import AudioLimits

    return AudioLimits.from_settings()


def configure_threads() -> None:
    """This process's thread budget and log levels; call it before TensorFlow is imported.

    TensorFlow reads TF_NUM_INTRAOP_THREADS when it creates its thread pools (SER_TF_THREADS; 0
    leaves it to TensorFlow). numpy's BLAS does one small product per clip (the mel filter bank)
    and gets one thread: its default pool of one thread per core spends more on synchronisation
    than it saves, and with a worker process per core it competes with the other processes
    (feature extraction measured 15 ms instead of 3 ms per clip on a busy 2-core host).
    """
    settings = get_settings()
    quiet_native_logs(settings.log_level)
    threads = settings.tf_threads
    if threads:
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def quiet_native_logs(level: str | None = None) -> None:
    """Keep TensorFlow's C++ start-up notes (the absl preamble, oneDNN, cpu_feature_guard) and
    its Python warnings off the user's terminal and the worker log: they are about the build,
    not about the work. SER_LOG_LEVEL=DEBUG lets them through.

    TF_CPP_MIN_LOG_LEVEL covers what TensorFlow logs once it runs (a value the user exported
    wins); the notes printed while its libraries load come before TensorFlow reads it (absl's
    "before InitializeLog" path), so the first import of TensorFlow has its native stderr
    filtered as well (see _QuietTensorFlowImport).
    """
    debug = level == "DEBUG"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0" if debug else "2")
    for name in ("tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.ERROR)
    if level:
        logging.getLogger("ser_worker").setLevel(level)
    already = any(isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path)
    if not debug and "tensorflow" not in sys.modules and not already:
        sys.meta_path.insert(0, _QuietTensorFlowImport())


# What TensorFlow's libraries print on fd 2 while they load: absl's preamble and its
# info/warning lines (I0000 00:00:… / W0000 …, or the older "2026-… : I tensorflow/…").
_LOAD_NOISE = re.compile(
    rb"absl::InitializeLog|oneDNN custom operations|cpu_feature_guard|"
    rb"^[IW]\d{4} \d\d:\d\d:|^\d{4}-\d\d-\d\d [\d:.]+: [IW] "
)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Runs the first ``import tensorflow`` with fd 2 captured, then writes back every line that
    is not load-time noise (an error while loading still reaches the terminal). Removes itself:
    later imports are dictionary lookups."""

    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteredLoader(spec.loader)
        return spec


class _FilteredLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        # Restored first: TensorFlow's own code may look at its loader.
        module.__loader__ = module.__spec__.loader = self.loader
        with _native_stderr_filtered():
            self.loader.exec_module(module)


@contextmanager
def _native_stderr_filtered() -> Iterator[None]:
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.readlines() if not _LOAD_NOISE.search(line)]
            if kept:
                os.write(2, b"".join(kept))


def warm_features() -> None:
    """Import the feature code and run it once (it no longer needs librosa: features.dsp)."""
    from ser_worker.features.study import FeatureSettings, extract

    rng = np.random.default_rng(0)
    extract(rng.standard_normal(SAMPLE_RATE).astype(np.float32) * 0.1, FeatureSettings())


def warm_models() -> None:
    """Load and trace the active model version if there is one. TensorFlow is imported only
    for a CNN that has no ONNX export (bundle.onnx): with exports a worker never loads it."""
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

    Sets the thread budget now; the features and the active bundle are loaded in a daemon
    thread (background=True) so that the child reports for work at once. With background=False
    only the features are warmed, in the calling thread.
    """
    configure_threads()
    if background:
        threading.Thread(target=_warm_in_background, name="ser-warm-up", daemon=True).start()
    else:
        warm_features()
