"""Embedded mode: no server configured, a fresh data directory, the shipped model."""

import json
import os
import sqlite3
from pathlib import Path

from ser_worker.labels import EMOTIONS

from .conftest import TEST_DATA, run_cli


def _embedded_env(data_dir: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SER_")}
    env["SER_DATA_DIR"] = str(data_dir)
    return env


def test_submit_wait_works_with_nothing_configured(tmp_path):
    env = _embedded_env(tmp_path / "fresh")

    result = run_cli(env, "submit", str(TEST_DATA), "--wait", "--json")

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status"] == {"done": 12}
    assert sum(summary["emotions"].values()) == 12
    assert (tmp_path / "fresh" / "ser.db").is_file()
    with sqlite3.connect(tmp_path / "fresh" / "ser.db") as connection:
        ((source, active),) = connection.execute("SELECT source, active FROM model_versions")
        predictions = connection.execute("SELECT count(*) FROM predictions").fetchone()[0]
    assert (source, active) == ("shipped", 1)
    assert predictions == 48

    rows = json.loads(run_cli(env, "results", "--all-models", "--format", "json").stdout)
    assert {row["model"] for row in rows} == {"cnn1d", "cnn2d", "encoder", "ensemble"}
    assert all(row["emotion"] in EMOTIONS for row in rows)
    # The shipped bundle records no calibration: uncertain below 0.5, as stored by the worker.
    assert all(row["uncertain"] is (row["confidence"] < 0.5) for row in rows)
    ensemble = [row for row in rows if row["model"] == "ensemble"]
    assert summary["uncertain"] == sum(row["uncertain"] for row in ensemble)
    assert (summary["predicted"], summary["uncertain_below"]) == (12, 0.5)


def test_cli_errors_are_clear_and_non_zero(tmp_path):
    env = _embedded_env(tmp_path / "data")
    (tmp_path / "empty").mkdir()

    missing = run_cli(env, "submit", str(tmp_path / "nope"))
    empty = run_cli(env, "submit", str(tmp_path / "empty"))
    unreachable = run_cli(
        {**env, "SER_BROKER_URL": "redis://127.0.0.1:1/0"}, "submit", str(TEST_DATA)
    )

    assert missing.returncode != 0 and "no such file or directory" in missing.stderr
    assert empty.returncode != 0 and "no audio files" in empty.stderr
    assert unreachable.returncode != 0 and "broker unreachable" in unreachable.stderr
