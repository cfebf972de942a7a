"""ser: speech emotion recognition as a batch service.

``celery -A ser_worker worker`` finds the app here; importing the package stays light.
"""

from ser_worker.celery_app import app

__all__ = ["app"]
