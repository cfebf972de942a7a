"""ser: speech emotion recognition as a batch service.

The Python API is ``Recognizer`` (see ``ser_worker.api``); ``celery -A ser_worker worker`` finds
the Celery app as ``ser_worker.app``. Both are looked up on first use: importing the package
starts no Celery app and loads neither TensorFlow nor librosa.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ser_worker.api import Prediction, Recognizer

__all__ = ["Prediction", "Recognizer", "app"]


def __getattr__(name: str) -> Any:
    if name in ("Recognizer", "Prediction"):
        from ser_worker import api

        return getattr(api, name)
    if name == "app":
        from ser_worker.service.celery_app import app

        return app
    raise AttributeError(f"module 'ser_worker' has no attribute {name!r}")
