"""The unit tests run without Keras: activation's prediction check (which loads the bundle) is
replaced here. The real check runs on real bundles in
tests/service/test_reliability_faults.py."""

import pytest

from ser_worker.service.store import versions


@pytest.fixture(autouse=True)
def _activation_without_keras(monkeypatch):
    monkeypatch.setattr(versions, "check_predicts", lambda data: None, raising=False)
