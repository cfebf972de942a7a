"""Commands that need no service, through Click's runner."""

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from cli.main import cli

CLIP = Path(__file__).resolve().parents[1] / "data" / "ravdess" / "Actor_01"


def test_verify_crema_d_reports_what_is_wrong_and_fails(tmp_path):
    shutil.copy(
        next(CLIP.glob("*.flac")), tmp_path / "1001_DFA_ANG_XX.wav"
    )  # right name, wrong bytes
    shutil.copy(next(CLIP.glob("*.flac")), tmp_path / "stray.wav")

    result = CliRunner().invoke(cli, ["verify-crema-d", str(tmp_path), "--json"])

    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["ok"] is False
    assert report["corrupted"] == ["1001_DFA_ANG_XX.wav"]
    assert report["extra"] == ["stray.wav"]
    assert len(report["missing"]) == 7441 and report["checked"] == 1


def test_labels_from_a_csv_are_not_offered_per_file(tmp_path):
    result = CliRunner().invoke(cli, ["submit", str(tmp_path), "--labels", "csv"])

    assert result.exit_code == 2
    assert "'csv' is not one of" in result.output
