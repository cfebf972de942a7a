"""The Python API on the committed clips: the shipped bundle in process, no Celery, no database."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ser_worker import Prediction, Recognizer
from ser_worker.audio import load_audio
from ser_worker.bundle import MemberPrediction, read_manifest, shipped_bundle_bytes
from ser_worker.labels import EMOTIONS, MEMBERS, SAMPLE_RATE

DATA = Path(__file__).resolve().parents[1] / "data"
CLIP = DATA / "ravdess" / "Actor_01" / "03-01-05-01-01-01-01.flac"


@pytest.fixture(scope="module")
def recognizer() -> Recognizer:
    return Recognizer()


def test_importing_the_package_loads_neither_celery_nor_tensorflow():
    code = (
        "import sys, ser_worker, ser_worker.api; from ser_worker import Recognizer, Prediction;"
        "print([m for m in ('celery', 'tensorflow', 'keras', 'librosa') if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_a_good_clip(recognizer):
    result = recognizer.predict_file(CLIP)
    assert isinstance(result, Prediction) and result.ok
    assert result.model_version == read_manifest(shipped_bundle_bytes()).version
    assert result.path == str(CLIP)
    assert result.emotion == max(result.probabilities, key=result.probabilities.get)
    assert result.confidence == result.probabilities[result.emotion]
    assert list(result.probabilities) == list(EMOTIONS)
    assert sum(result.probabilities.values()) == pytest.approx(1.0)
    assert tuple(result.per_member) == MEMBERS
    assert all(isinstance(p, MemberPrediction) for p in result.per_member.values())
    as_dict = result.to_dict()
    json.dumps(as_dict)
    assert as_dict["error_code"] is None and set(as_dict["per_member"]) == set(MEMBERS)
    # The ensemble's flag, at the bundle's threshold (0.5: the shipped bundle records none).
    assert (
        result.uncertain is (result.confidence < 0.5) and as_dict["uncertain"] is result.uncertain
    )
    assert all("uncertain" in member for member in as_dict["per_member"].values())


def test_a_batch_with_bad_files_still_predicts_the_rest(recognizer, tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("these are not the samples you are looking for\n" * 20)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    good = sorted(DATA.rglob("*.flac"))[:3]
    paths = [good[0], text, good[1], empty, tmp_path / "missing.wav", good[2]]
    results = recognizer.predict_files(paths, batch_size=2)
    assert [r.path for r in results] == [str(p) for p in paths]
    assert [r.error_code for r in results] == [
        None,
        "not_audio",
        None,
        "empty",
        "unreadable",
        None,
    ]
    for bad in (results[1], results[3], results[4]):
        assert bad.emotion is None and bad.error and not bad.ok and bad.per_member == {}
        assert bad.uncertain is None
    alone = [recognizer.predict_file(p) for p in good]
    for batched, single in zip((results[0], results[2], results[5]), alone, strict=True):
        assert batched.emotion == single.emotion
        np.testing.assert_allclose(
            list(batched.probabilities.values()), list(single.probabilities.values()), atol=1e-5
        )


def test_a_signal_at_44_1_khz_is_resampled(recognizer):
    import soxr

    y = load_audio(CLIP, trim=False)
    at_44k = soxr.resample(y, SAMPLE_RATE, 44_100, quality="HQ")
    result = recognizer.predict_signal(at_44k, sampling_rate=44_100)
    from_file = recognizer.predict_file(CLIP)
    assert result.ok and result.path is None
    assert result.emotion == from_file.emotion
    np.testing.assert_allclose(
        list(result.probabilities.values()), list(from_file.probabilities.values()), atol=0.02
    )


def test_an_unusable_signal_gets_the_services_error_code(recognizer):
    assert recognizer.predict_signal(np.zeros(SAMPLE_RATE), SAMPLE_RATE).error_code == "silent"
    short = np.random.default_rng(0).normal(size=SAMPLE_RATE // 10).astype(np.float32) * 0.1
    assert recognizer.predict_signal(short, SAMPLE_RATE).error_code == "too_short"
    noisy = np.full(SAMPLE_RATE, np.nan, dtype=np.float32)
    assert recognizer.predict_signal(noisy, SAMPLE_RATE).error_code == "non_finite"


def test_another_bundle_by_path(tmp_path):
    path = tmp_path / "bundle.zip"
    path.write_bytes(shipped_bundle_bytes())
    assert Recognizer(path).model_version == read_manifest(path).version
