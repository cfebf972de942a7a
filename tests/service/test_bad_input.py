"""Bad input through the real service: one folder holding every kind of unusable (and unusual but
valid) file, submitted once with `ser-cli submit --wait --json` to a real prefork worker.

Each bad file must fail on its own, with its stable `error_code` and a message naming the problem,
while every valid file — whatever its bit depth, rate, channels, container or name — is predicted.
"""

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from sqlalchemy import func, select

from ser_worker.service.db.models import AudioBlob, Prediction, SubmissionItem
from ser_worker.service.db.session import session_scope

from .conftest import BIN, REPO, register_bundle, run_cli

pytestmark = pytest.mark.integration

MAX_BYTES = 2_000_000
MAX_DURATION_S = 5
NESTING = 30
# Invalid UTF-8 (Latin-1 "été"): how old archives name files. The name is shown with U+FFFD.
LATIN1_NAME = b"latin1-\xe9t\xe9.wav"
LATIN1_SHOWN = "latin1-\ufffdt\ufffd.wav"


def speech(sample_rate: int, seconds: float = 1.5, f0: float = 150.0) -> np.ndarray:
    """A harmonic tone with a 4 Hz syllable-like envelope that never reaches silence."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    tone = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 8) if k * f0 < sample_rate / 2)
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)
    return (0.3 * tone / np.max(np.abs(tone)) * envelope).astype(np.float32)


def encode(y: np.ndarray, sample_rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, y, sample_rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


# Display name (relative to the submitted folder) -> bytes, for the files that must work.
def _valid_files() -> dict[str, bytes]:
    stereo = speech(48_000, f0=170)
    return {
        "ça va — 1.wav": encode(speech(16_000), 16_000, subtype="PCM_16"),
        "pcm_u8.wav": encode(speech(16_000, f0=120), 16_000, subtype="PCM_U8"),
        "pcm_24.wav": encode(speech(22_050), 22_050, subtype="PCM_24"),
        "float32.wav": encode(speech(44_100), 44_100, subtype="FLOAT"),
        "stereo.wav": encode(np.stack([stereo, 0.5 * stereo], axis=1), 48_000, subtype="PCM_16"),
        "rate 8 kHz.wav": encode(speech(8_000), 8_000, subtype="PCM_16"),
        "rate 96 kHz.wav": encode(speech(96_000), 96_000, subtype="PCM_16"),
        "clip.mp3": encode(speech(44_100, f0=140), 44_100, fmt="MP3"),
        "日本語.flac": encode(speech(16_000, f0=180), 16_000, fmt="FLAC"),
        "clip.ogg": encode(speech(22_050, f0=160), 22_050, fmt="OGG", subtype="VORBIS"),
        "/".join(f"level-{i:02d}" for i in range(1, NESTING + 1)) + "/deep.wav": encode(
            speech(16_000, f0=200), 16_000, subtype="PCM_16"
        ),
    }


# Display name -> (bytes, error_code, words the stored message must contain).
def _bad_files() -> dict[str, tuple[bytes, str, tuple[str, ...]]]:
    wav = encode(speech(16_000), 16_000, subtype="PCM_16")
    nan = speech(16_000)
    nan[1000:1010] = np.nan
    inf = speech(16_000)
    inf[2000] = np.inf
    loud = speech(48_000, seconds=32)  # 3 MB of 16-bit samples: over the 2 MB limit
    return {
        "empty.wav": (b"", "empty", ("empty", "0 bytes")),
        "random.wav": (
            np.random.default_rng(0).bytes(20_000),
            "not_audio",
            ("not a readable audio file",),
        ),
        "text.wav": (b"emotion,path\nANG,a.wav\n" * 100, "not_audio", ("not a readable audio",)),
        "header cut.wav": (wav[:20], "truncated", ("header", "truncated")),
        "data cut.wav": (wav[: len(wav) // 2], "truncated", ("declares", "truncated")),
        "silence.wav": (
            encode(np.zeros(24_000, np.float32), 16_000, subtype="PCM_16"),
            "silent",
            ("silent",),
        ),
        "blip.wav": (
            encode(speech(16_000, seconds=0.01), 16_000, subtype="PCM_16"),
            "too_short",
            ("0.01 s", "minimum is 0.25 s"),
        ),
        "long.wav": (
            encode(speech(16_000, seconds=10), 16_000, subtype="PCM_16"),
            "too_long",
            ("10.0 s", f"maximum is {MAX_DURATION_S} s"),
        ),
        "large.wav": (
            encode(loud, 48_000, subtype="PCM_16"),
            "too_large",
            ("3,072,044 bytes", f"{MAX_BYTES:,}"),
        ),
        "nan.wav": (encode(nan, 16_000, subtype="FLOAT"), "non_finite", ("10 NaN or infinite",)),
        "inf.wav": (encode(inf, 16_000, subtype="FLOAT"), "non_finite", ("1 NaN or infinite",)),
    }


def _without_read_override(tmp_path: Path) -> list[str] | None:
    """A command prefix under which a mode-000 file cannot be read, or None where none exists.

    Root reads any file whatever its mode bits (CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH), so as
    root the CLI runs with those two capabilities dropped: still uid 0, bound by the mode bits.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
    locked = tmp_path / "probe-locked"
    locked.write_bytes(b"x")
    locked.chmod(0o000)
    probe = subprocess.run(
        [*prefix, BIN / "python", "-c", "import sys, cli.main; open(sys.argv[1], 'rb')", locked],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    return prefix if "PermissionError" in probe.stderr else None


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_every_bad_file_fails_alone_and_every_odd_valid_file_works(
    service_env, start_worker, database_url, test_bundle, tmp_path
):
    register_bundle(database_url, test_bundle)
    limits = {"SER_MAX_DURATION_S": str(MAX_DURATION_S), "SER_MAX_FILE_BYTES": str(MAX_BYTES)}
    env = {**service_env, **limits}
    start_worker("inference", 1, **limits)

    root = tmp_path / "clips"
    valid, bad = _valid_files(), _bad_files()
    for name, data in valid.items():
        _write(root / name, data)
    for name, (data, _, _) in bad.items():
        _write(root / name, data)
    _write(root / "notes.txt", b"recorded on a Tuesday\n")
    _write(root / "clip.xyz", valid["ça va — 1.wav"])
    (root / "loops").mkdir()
    (root / "loops" / "back").symlink_to("..", target_is_directory=True)  # a cycle
    (root / os.fsdecode(LATIN1_NAME)).write_bytes(
        encode(speech(16_000, f0=210), 16_000, subtype="PCM_16")
    )
    prefix = _without_read_override(tmp_path)
    if prefix is not None:
        _write(root / "locked.wav", valid["ça va — 1.wav"])
        (root / "locked.wav").chmod(0o000)

    result = subprocess.run(
        [*(prefix or []), BIN / "ser-cli", "submit", str(root), "--wait", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    shown = {f"clips/{name}" for name in valid} | {f"clips/{LATIN1_SHOWN}"}
    expected_failures = {f"clips/{name}": code for name, (_, code, _) in bad.items()}
    if prefix is not None:
        expected_failures["clips/locked.wav"] = "unreadable"
    assert summary["status"] == {"done": len(shown), "failed": len(expected_failures)}
    assert {f["clip"]: f["error_code"] for f in summary["failed"]} == expected_failures
    # Skipped, and said so; the cycle is neither followed nor reported as a file.
    assert sorted(summary["unsupported"]) == [str(root / "clip.xyz"), str(root / "notes.txt")]
    assert "clip.xyz: not a supported audio file" in " ".join(result.stderr.split())

    listing = run_cli(
        env, "results", summary["submission"], "--format", "json", "--model", "ensemble"
    )
    assert listing.returncode == 0, listing.stderr
    rows = {row["clip"]: row for row in json.loads(listing.stdout)}
    assert set(rows) == shown | set(expected_failures)  # each file once: the loop added nothing
    for clip in shown:
        assert rows[clip]["status"] == "done", rows[clip]
        assert rows[clip]["error"] is None and rows[clip]["emotion"] is not None
    for name, (_, code, words) in bad.items():
        row = rows[f"clips/{name}"]
        assert (row["status"], row["error_code"], row["emotion"]) == ("failed", code, None), row
        for word in words:
            assert word in row["error"], (name, row["error"])
    if prefix is not None:
        locked = rows["clips/locked.wav"]
        assert locked["error_code"] == "unreadable" and "Permission denied" in locked["error"]

    with session_scope(database_url) as session:
        items = {item.filename: item for item in session.scalars(select(SubmissionItem))}
        largest = session.scalar(select(func.max(AudioBlob.size_bytes)))
        predicted = session.scalar(select(func.count(func.distinct(Prediction.sha256))))
    for clip in shown:
        # Every valid clip is 1.5 s of sound whatever its rate: resampled to 16 kHz, edges kept.
        assert items[clip].duration_s == pytest.approx(1.5, abs=0.1), clip
    assert predicted == len(shown)
    # Names are shown relative to the submitted folder: no path of the submitter's machine.
    assert not [name for name in items if name.startswith("/") or str(tmp_path) in name]
    # Refused before upload: no bytes stored for the oversized or the unreadable file.
    assert items["clips/large.wav"].sha256 is None
    assert largest < MAX_BYTES
    if prefix is not None:
        assert items["clips/locked.wav"].sha256 is None


def test_empty_folder_and_missing_path_are_clear_errors(tmp_path):
    # Services that do not exist: the path is checked first, so its error is the one shown.
    env = {key: value for key, value in os.environ.items() if not key.startswith("SER_")}
    env.update(
        SER_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/none",
        SER_BROKER_URL="redis://127.0.0.1:1/0",
    )
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("no audio here")

    missing = run_cli(env, "submit", str(tmp_path / "nope"), "--wait")
    empty = run_cli(env, "submit", str(tmp_path / "empty"), "--wait", "--json")

    assert missing.returncode != 0
    assert f"{tmp_path / 'nope'}: no such file or directory" in missing.stderr
    assert empty.returncode != 0
    assert "no audio files (.wav .flac .ogg .mp3) found under" in empty.stderr
    assert "Traceback" not in missing.stderr + empty.stderr
    assert missing.stdout == empty.stdout == ""
