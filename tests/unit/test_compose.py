"""docker-compose.yml is validated by the real compose tool (no engine is needed for `config`)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("redis", "postgres", "migrate", "worker-inference", "worker-training", "beat", "flower")


def _compose() -> list[str]:
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    if legacy := shutil.which("docker-compose"):
        return [legacy]
    if os.environ.get("SER_REQUIRE_SERVICES") == "1":
        pytest.fail("neither `docker compose` nor `docker-compose` is installed")
    pytest.skip("no docker compose tool installed")


def _config(env_file: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("POSTGRES_PASSWORD", "REDIS_PASSWORD")}
    return subprocess.run(
        [
            *_compose(),
            "--env-file",
            str(env_file),
            "-f",
            str(REPO / "docker-compose.yml"),
            "--profile",
            "monitoring",
            "config",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )


def test_compose_file_is_valid_and_has_every_role():
    result = _config(REPO / ".env.example")

    assert result.returncode == 0, result.stderr
    for service in SERVICES:
        assert f"\n  {service}:\n" in result.stdout, service
    assert "redis://:change-me-redis@redis:6379/0" in result.stdout  # password from the env file


def test_compose_refuses_to_start_without_passwords(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")

    result = _config(empty)

    assert result.returncode != 0
    assert "PASSWORD" in result.stderr
