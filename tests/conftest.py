"""Shared test settings. Service-backed tests skip where Redis or PostgreSQL are absent (a laptop),
but with SER_REQUIRE_SERVICES=1 (set by .ci/run) a missing service fails the run instead."""

import os

# Keep TensorFlow quiet and predictable on a 2-core machine.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
