"""No TensorFlow start-up noise on a user's terminal: real processes, with TF_CPP_MIN_LOG_LEVEL
unset as on a fresh machine (the test suite's conftest sets it for everything else)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOISE = ("absl::InitializeLog", "oneDNN", "cpu_feature_guard", "port.cc", "I0000")


def fresh_env(home: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SER_") and key not in ("TF_CPP_MIN_LOG_LEVEL", "XDG_DATA_HOME")
    }
    return {**env, "HOME": str(home)}


def test_importing_tensorflow_after_the_process_setup_prints_nothing(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from ser_worker.service import runtime; runtime.configure_threads(); "
            "import tensorflow, sys; print('loaded', file=sys.stderr)",
        ],
        env=fresh_env(tmp_path),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "loaded\n"


@pytest.mark.timeout(900)
def test_submit_wait_in_a_fresh_home_shows_no_tensorflow_noise(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", "from cli.main import cli; cli()", "submit", "tests/data/ravdess"]
        + ["--wait"],
        env=fresh_env(tmp_path),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    assert "6 done" in done.stderr
    assert not [line for line in done.stderr.splitlines() if any(n in line for n in NOISE)]
    assert "WARNING" not in done.stderr and "Traceback" not in done.stderr
