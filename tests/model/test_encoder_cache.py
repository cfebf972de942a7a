"""The speech encoder's graph cache (ser_worker/models/encoder/cache.py): a process that finds
the graph on disk gives exactly the vectors of one that builds it, never trusts a file that is
not exactly what it would build, and works where nothing can be written."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ser_worker.audio import load_audio
from ser_worker.models.encoder import LAYERS, EncoderUnavailable, SpeechEncoder, cache, weights


@pytest.fixture(scope="module")
def waveforms(real_clips) -> list[np.ndarray]:
    return [load_audio(path, trim=False) for path in real_clips]


@pytest.fixture(scope="module")
def built() -> bytes:
    """The graph as every process built it before the cache, from the hash-checked weights."""
    return cache.encoder_graph_bytes(LAYERS, None)


@pytest.fixture(scope="module")
def uncached(waveforms) -> np.ndarray:
    return SpeechEncoder(LAYERS, 1).embed(waveforms)


@pytest.fixture
def builds(monkeypatch) -> list[tuple[int, ...]]:
    """The graphs built from the weights from now on (a cache hit builds none)."""
    calls = []
    build = cache.graph.encoder_graph

    def counted(arrays, layers):
        calls.append(tuple(layers))
        return build(arrays, layers)

    monkeypatch.setattr(cache.graph, "encoder_graph", counted)
    return calls


def only_cache_file(directory):
    files = [path for path in directory.iterdir()]
    assert len(files) == 1, files  # no temporary file left behind
    return files[0]


def test_a_hit_and_a_miss_give_exactly_the_vectors_of_a_build(
    tmp_path, waveforms, uncached, built, builds, monkeypatch
):
    assert len(waveforms) == 12
    missed = SpeechEncoder(LAYERS, 1, cache_dir=tmp_path).embed(waveforms)
    assert builds == [LAYERS]
    path = only_cache_file(tmp_path)
    assert cache.read_cached(path, cache.cache_key(LAYERS)) == built

    def no_weights():
        raise AssertionError("a cache hit reads neither the weights nor their 145 MB hash")

    monkeypatch.setattr(weights, "verified_weight_parts", no_weights)
    hit = SpeechEncoder(LAYERS, 1, cache_dir=tmp_path).embed(waveforms)
    assert builds == [LAYERS]
    np.testing.assert_array_equal(missed, uncached)
    np.testing.assert_array_equal(hit, uncached)


def damaged(path, how: str) -> None:
    data = path.read_bytes()
    magic, header, payload = data.split(b"\n", 2)
    if how == "flipped byte":
        middle = len(payload) // 2
        payload = payload[:middle] + bytes([payload[middle] ^ 1]) + payload[middle + 1 :]
    elif how == "cut short":
        payload = payload[: len(payload) // 3]
    elif how == "other layers recorded":
        record = json.loads(header)
        record["key"]["layers"] = [6]
        header = json.dumps(record).encode()
    elif how == "no header":
        magic = b"ONNX"
    elif how == "empty":
        path.write_bytes(b"")
        return
    path.write_bytes(b"\n".join([magic, header, payload]))


@pytest.mark.parametrize(
    "how", ["flipped byte", "cut short", "other layers recorded", "no header", "empty"]
)
def test_a_damaged_or_foreign_cache_file_is_never_read(tmp_path, how):
    key = cache.cache_key(LAYERS)
    path = cache.cache_path(tmp_path, key)
    graph = bytes(range(256)) * 64
    assert cache.write_cached(path, key, graph)
    assert cache.read_cached(path, key) == graph
    damaged(path, how)
    assert cache.read_cached(path, key) is None


def test_a_damaged_cache_file_is_rebuilt_and_replaced(
    tmp_path, waveforms, uncached, built, builds, caplog
):
    key = cache.cache_key(LAYERS)
    path = cache.cache_path(tmp_path, key)
    cache.write_cached(path, key, built)
    damaged(path, "flipped byte")
    vectors = SpeechEncoder(LAYERS, 1, cache_dir=tmp_path).embed(waveforms[:2])
    assert builds == [LAYERS]
    assert "damaged" in caplog.text
    np.testing.assert_array_equal(vectors, uncached[:2])
    assert only_cache_file(tmp_path) == path
    assert cache.read_cached(path, key) == built


def test_a_cache_built_for_other_weights_or_layers_is_not_used(tmp_path, built, monkeypatch):
    key = cache.cache_key(LAYERS)
    cache.write_cached(cache.cache_path(tmp_path, key), key, built)
    assert cache.cache_path(tmp_path, cache.cache_key((6,))) != cache.cache_path(tmp_path, key)
    # Other pinned weights: another key, so a build, and the pinned-hash check refuses it.
    monkeypatch.setattr(weights, "MODEL_SHA256", "0" * 64)
    assert cache.cache_path(tmp_path, cache.cache_key(LAYERS)) != cache.cache_path(tmp_path, key)
    with pytest.raises(EncoderUnavailable, match="not the pinned"):
        SpeechEncoder(LAYERS, 1, cache_dir=tmp_path)


@pytest.mark.parametrize("where", ["under a file", "a folder where the file goes"])
def test_a_cache_that_cannot_be_written_still_gives_the_encoder(
    tmp_path, waveforms, uncached, builds, where
):
    if where == "under a file":
        (tmp_path / "a-file").write_text("")
        cache_dir = tmp_path / "a-file" / "cache"
    else:
        cache_dir = tmp_path / "cache"
        cache.cache_path(cache_dir, cache.cache_key(LAYERS)).mkdir(parents=True)
    vectors = SpeechEncoder(LAYERS, 1, cache_dir=cache_dir).embed(waveforms[:2])
    np.testing.assert_array_equal(vectors, uncached[:2])
    assert builds == [LAYERS]
    if where != "under a file":
        leftovers = [p for p in cache_dir.iterdir() if p.suffix == ".tmp"]
        assert leftovers == []


def test_workers_keep_it_in_the_data_dir(tmp_path, monkeypatch):
    from ser_worker.config import get_settings

    monkeypatch.setenv("SER_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        assert cache.default_cache_dir() == tmp_path / "data" / "cache"
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_a_restarted_worker_builds_nothing_it_can_read(tmp_path, real_clips, built):
    """With the graph cached, predicting a clip loads neither onnx (the graph builder) nor
    scikit-learn (librosa.effects, which trimming no longer imports): their imports were 0.5 s
    and 0.25 s of a worker's cold start. In a process of its own, as a restarted worker."""
    key = cache.cache_key(LAYERS)
    cache.write_cached(cache.cache_path(tmp_path / "cache", key), key, built)
    script = (
        "import sys\n"
        "from ser_worker.api import Recognizer\n"
        f"assert Recognizer().predict_file({str(real_clips[0])!r}).error_code is None\n"
        "print(sorted(m for m in ('onnx', 'sklearn', 'tensorflow') if m in sys.modules))\n"
    )
    env = {**os.environ, "SER_DATA_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
