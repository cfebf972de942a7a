"""Misconfiguration and damage that used to end in a traceback (#18 items 6, 10, 12): the real
CLI on an embedded store in a temporary data directory, in its own process where the setting
is read at import (the broker URL) or the fault is a race between processes."""

import io
import json
import os
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli as ser_cli
from ser_worker.bundle import BundleError, read_manifest, shipped_bundle_bytes
from ser_worker.bundle import archive as bundle_archive
from ser_worker.config import get_settings
from ser_worker.service.db.migrate import upgrade_database
from ser_worker.service.db.session import get_engine

SER_CLI = str(Path(sys.executable).with_name("ser-cli"))


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    for key in list(os.environ):
        if key.startswith("SER_"):
            monkeypatch.delenv(key)
    directory = tmp_path / "data"
    monkeypatch.setenv("SER_DATA_DIR", str(directory))
    _reset()
    yield directory
    _reset()


def _reset() -> None:
    get_settings.cache_clear()
    get_engine.cache_clear()


def _cli(*args: str):
    return CliRunner().invoke(ser_cli, list(args))


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SER_")}
    return {**env, "HOME": str(tmp_path / "home"), "XDG_DATA_HOME": "", **extra}


def _run(env: dict[str, str], *args: str, cwd: Path | None = None, timeout: float = 120):
    return subprocess.run(
        [SER_CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


# 10. The store itself damaged or misplaced.


def test_a_store_truncated_to_zero_bytes_is_reported_not_reset(data_dir):
    data_dir.mkdir()
    (data_dir / "ser.db").write_bytes(b"")

    result = _cli("status")

    assert result.exit_code == 1
    assert "is empty (0 bytes)" in result.output and str(data_dir / "ser.db") in result.output
    assert "Traceback" not in result.output
    assert (data_dir / "ser.db").stat().st_size == 0  # nothing written over it


def test_a_file_that_is_not_a_database_is_reported(data_dir):
    data_dir.mkdir()
    (data_dir / "ser.db").write_bytes(b"these are not the bytes of a database\n" * 200)

    result = _cli("results")

    assert result.exit_code == 1
    assert "is not a SQLite database" in result.output
    assert "move it aside" in result.output


def test_a_malformed_store_is_reported_without_sql(data_dir):
    upgrade_database()
    get_engine().dispose()
    _reset()
    path = data_dir / "ser.db"
    with sqlite3.connect(path) as connection:  # the schema out of the WAL into the file
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert path.stat().st_size > 4096
    data = bytearray(path.read_bytes())
    data[4096:] = b"\xa5" * (len(data) - 4096)  # every page after the header page
    path.write_bytes(bytes(data))

    result = _cli("models")

    assert result.exit_code == 1
    assert "The store is corrupt" in result.output
    assert "SELECT" not in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("layout", "expected"),
    [("file", "is a file, not a folder"), ("under_file", "a part of its path is a file")],
)
def test_a_data_dir_that_is_a_file_or_under_one_is_reported(
    tmp_path, monkeypatch, layout, expected
):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    target = blocker if layout == "file" else blocker / "ser"
    for key in list(os.environ):
        if key.startswith("SER_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("SER_DATA_DIR", str(target))
    _reset()
    try:
        result = _cli("status")
    finally:
        _reset()
    assert result.exit_code == 1
    assert expected in result.output and "SER_DATA_DIR" in result.output


def test_an_empty_data_dir_setting_means_the_default_not_the_cwd(tmp_path):
    cwd = tmp_path / "somewhere"
    cwd.mkdir()
    result = _run(_clean_env(tmp_path, SER_DATA_DIR=""), "models", "--json", cwd=cwd)

    assert result.returncode == 0, result.stderr
    assert list(cwd.iterdir()) == []
    assert (tmp_path / "home" / ".local" / "share" / "ser" / "ser.db").is_file()


# 10. URLs the service cannot use.


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://u@127.0.0.1/db", "names a 'mysql' database"),
        ("postgresql+psycopg://u@127.0.0.1:notaport/db", "not a usable database URL"),
        ("postgresql+psycopg://u@127.0.0.1:99999/db", "outside 1-65535"),
        ("not a url at all", "not a usable database URL"),
    ],
)
def test_database_urls_the_service_cannot_use_are_one_line(data_dir, monkeypatch, url, expected):
    monkeypatch.setenv("SER_DATABASE_URL", url)
    _reset()

    for command in ("status", "db"):
        result = _cli(*([command, "upgrade"] if command == "db" else [command]))
        assert result.exit_code == 1, result.output
        assert expected in result.output, result.output
        assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("foo://127.0.0.1:6379/0", "No such transport: foo"),
        ("redis://127.0.0.1:notaport/0", "Port could not be cast"),
    ],
)
def test_broker_urls_the_service_cannot_use_are_one_line(tmp_path, url, expected):
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "a.wav").write_bytes(b"RIFF")
    database = f"sqlite:///{tmp_path / 'store.db'}"
    env = _clean_env(tmp_path, SER_BROKER_URL=url, SER_DATABASE_URL=database)

    result = _run(env, "submit", str(folder))

    assert result.returncode == 1, result.stderr
    assert "broker unreachable" in result.stderr and expected in result.stderr
    assert "Traceback" not in result.stderr


# 6. First commands at once on a fresh embedded store.


def test_first_commands_at_once_on_a_fresh_store_all_succeed(tmp_path):
    env = _clean_env(tmp_path)
    commands = [
        subprocess.Popen(
            [SER_CLI, "models", "--json"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outcomes = [(process.wait(timeout=120), process.stderr.read()) for process in commands]
    for command in commands:
        command.stdout.close()
        command.stderr.close()

    assert [code for code, _ in outcomes] == [0, 0, 0], outcomes


# 12 and 10. Bundles whose zip directory or manifest is hostile.


def _rezipped(bundle: bytes, **replaced: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(bundle)) as source, zipfile.ZipFile(buffer, "w") as target:
        for info in source.infolist():
            target.writestr(info.filename, replaced.pop(info.filename, None) or source.read(info))
        for name, data in replaced.items():
            target.writestr(name, data)
    return buffer.getvalue()


def test_a_manifest_nested_200k_deep_is_a_bundle_error():
    deep = b"[" * 200_000 + b"]" * 200_000
    bundle = _rezipped(shipped_bundle_bytes(), **{"manifest.json": deep})

    with pytest.raises(BundleError, match="nested too deeply"):
        read_manifest(bundle)


@pytest.mark.parametrize("constant", ["Infinity", "NaN", "-Infinity"])
def test_a_manifest_holding_nan_or_infinity_is_refused(constant):
    shipped = shipped_bundle_bytes()
    manifest = json.loads(zipfile.ZipFile(io.BytesIO(shipped)).read("manifest.json"))
    first = json.dumps(next(iter(manifest["ensemble_weights"].values())))
    weights = json.dumps(manifest["ensemble_weights"]).replace(first, constant, 1)
    text = json.dumps(manifest).replace(json.dumps(manifest["ensemble_weights"]), weights)
    bundle = _rezipped(shipped, **{"manifest.json": text.encode()})

    with pytest.raises(BundleError, match=f"{constant.lstrip('-')} is not a number"):
        read_manifest(bundle)


def test_a_member_that_would_inflate_past_the_limit_is_refused_from_the_directory(monkeypatch):
    """An 8 MB zip can hold a member of gigabytes; the directory's sizes are read, not the data."""
    over = bundle_archive.MAX_MEMBER_BYTES + 1
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("manifest.json", b"{}")
        with archive.open("cnn1d.weights.h5", "w", force_zip64=True) as member:
            zeros = bytes(2**20)
            for _ in range(over // len(zeros) + 1):
                member.write(zeros)
    bundle = buffer.getvalue()
    assert len(bundle) < 8 * 2**20

    def never(*_args, **_kwargs):
        raise AssertionError("a member was read")

    monkeypatch.setattr(zipfile.ZipFile, "read", never)
    with pytest.raises(BundleError, match="would inflate to .* over the limit"):
        read_manifest(bundle)


def test_a_forged_directory_claiming_2_gib_is_refused_before_reading():
    bundle = bytearray(shipped_bundle_bytes())
    # Claim 2 GiB for the first member in the central directory (uncompressed size field).
    start = bundle.rfind(b"PK\x01\x02", 0, len(bundle))
    first = bundle.find(b"PK\x01\x02")
    assert first != -1 and start != -1
    bundle[first + 24 : first + 28] = (2**31).to_bytes(4, "little")

    with pytest.raises(BundleError, match="would inflate to 2147483648 bytes"):
        read_manifest(bytes(bundle))
