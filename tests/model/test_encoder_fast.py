"""The speech encoder's default runtime (ONNX Runtime, one pass for every pooled block) gives the
vectors of the CTranslate2 path the shipped heads were fitted on."""

from pathlib import Path

import numpy as np
import pytest

from ser_worker.audio import load_audio
from ser_worker.models.encoder import (
    BACKENDS,
    CTRANSLATE2,
    ENCODER_BLOCKS,
    ENCODER_WIDTH,
    LAYERS,
    ONNXRUNTIME,
    WINDOW_FRAMES,
    EncoderUnavailable,
    SpeechEncoder,
    encoder_arrays,
    encoder_windows,
    load_encoder,
    weights,
)
from ser_worker.models.encoder.graph import encoder_graph

TESTS = Path(__file__).resolve().parents[1]
COMMITTED_CLIPS = sorted((TESTS / "data").rglob("*.flac")) + sorted(
    (TESTS / "corpus").rglob("*.flac")
)
MIN_COSINE = 0.999


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def arrays() -> dict[str, np.ndarray]:
    return encoder_arrays(weights.verified_weight_parts())


def test_the_default_is_onnxruntime_and_ctranslate2_stays_callable():
    assert BACKENDS == (ONNXRUNTIME, CTRANSLATE2)
    assert load_encoder().backend == ONNXRUNTIME
    assert load_encoder(LAYERS, 0, CTRANSLATE2).backend == CTRANSLATE2
    with pytest.raises(ValueError, match="backend"):
        SpeechEncoder(backend="torch")


def test_every_committed_clip_pools_to_the_vector_of_the_ctranslate2_path():
    assert len(COMMITTED_CLIPS) >= 80
    waveforms = [load_audio(path, trim=False) for path in COMMITTED_CLIPS]
    fast = load_encoder(LAYERS, 1, ONNXRUNTIME).embed(waveforms)
    reference = load_encoder(LAYERS, 1, CTRANSLATE2).embed(waveforms)
    half = fast.shape[1] // len(LAYERS)
    for block in range(len(LAYERS)):
        part = slice(block * half, (block + 1) * half)
        worst = cosines(fast[:, part], reference[:, part]).min()
        assert worst >= MIN_COSINE, (LAYERS[block], worst)
    assert cosines(fast, reference).min() >= MIN_COSINE


def test_a_clip_embeds_the_same_alone_or_beside_others():
    """Activations are quantised per tensor, so windows run one at a time: a clip's vector must
    not depend on the clips it is batched with."""
    waveforms = [load_audio(path, trim=False) for path in COMMITTED_CLIPS[:4]]
    encoder = load_encoder(LAYERS, 1, ONNXRUNTIME)
    together = encoder.embed(waveforms)
    for i, y in enumerate(waveforms):
        np.testing.assert_array_equal(encoder.embed([y])[0], together[i])


def test_the_weights_read_from_the_pinned_file_are_the_encoders(arrays):
    assert arrays["conv1/weight"].shape == (ENCODER_WIDTH, 80, 3)
    assert arrays["position_encodings/encodings"].shape == (1500, ENCODER_WIDTH)
    blocks = {name.split("/")[0] for name in arrays if name.split("/")[0][6:].isdigit()}
    assert blocks == {f"layer_{i}" for i in range(ENCODER_BLOCKS)}
    assert "layer_norm/gamma" in arrays  # the final layer norm, applied to every output
    assert arrays["layer_5/ffn/linear_0/weight"].shape == (4 * ENCODER_WIDTH, ENCODER_WIDTH)
    assert all(a.dtype == np.float32 for a in arrays.values() if a.dtype.kind == "f")


def test_one_pass_yields_each_pooled_block_and_shallow_blocks_stop_early(arrays):
    import onnxruntime

    features = encoder_windows(load_audio(COMMITTED_CLIPS[0], trim=False))[0][0][None]
    both = onnxruntime.InferenceSession(encoder_graph(arrays, (3, 6)))
    last = onnxruntime.InferenceSession(encoder_graph(arrays, (6,)))
    block_3, block_6 = both.run(["block_3", "block_6"], {"mel": features})
    assert block_3.shape == block_6.shape == (1, WINDOW_FRAMES // 2, ENCODER_WIDTH)
    np.testing.assert_array_equal(last.run(["block_6"], {"mel": features})[0], block_6)
    assert not np.allclose(block_3, block_6, atol=1e-2)


def test_the_fast_path_refuses_weights_that_are_not_the_pinned_ones(monkeypatch):
    monkeypatch.setattr(weights, "MODEL_SHA256", "0" * 64)
    with pytest.raises(EncoderUnavailable, match="not the pinned"):
        SpeechEncoder(backend=ONNXRUNTIME)


def test_the_benchmarks_flop_count_of_a_window():
    from benchmarks.flops import encoder_window_flops

    # Per 6 s window: the stem (80 -> 512 over 600 frames, 512 -> 512 over 300), then per block
    # the four linear maps (6144 multiply-adds per frame and channel) and attention's two
    # 300 x 300 products.
    stem = 600 * 512 * 80 * 3 + 300 * 512 * 512 * 3
    block = 300 * 512 * (3 * 512 + 512 + 2 * 2048) + 2 * 300 * 300 * 512
    assert encoder_window_flops(WINDOW_FRAMES, 6) == 2 * (stem + 6 * block) == 13_049_856_000
    # The CTranslate2 path: a stem and blocks 1-3 again for block 3's copy.
    assert encoder_window_flops(WINDOW_FRAMES, 9, stems=2) == 2 * (2 * stem + 9 * block)
