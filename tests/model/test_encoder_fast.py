"""The speech encoder's default runtime (ONNX Runtime, one pass for every pooled block) gives the
vectors the shipped heads were fitted on: CTranslate2's int8 vectors, which match the float32
encoder's to cosine 0.9999 where they were made (a host with VNNI)."""

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
from ser_worker.models.encoder.encoder import _CTranslate2Encoder
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


def _float32_vectors(waveforms: list[np.ndarray]) -> np.ndarray:
    """The encoder in float32 (CTranslate2): what int8 arithmetic approximates. The heads were
    fitted on CTranslate2's int8 vectors on a host with VNNI, which match these to cosine
    0.9999; on a host without VNNI CTranslate2's int8 products saturate (graph.WEIGHT_LEVELS),
    so its int8 vectors are no reference there."""
    encoder = SpeechEncoder.__new__(SpeechEncoder)
    encoder.layers = LAYERS
    runner = _CTranslate2Encoder(weights.verified_weight_parts(), LAYERS, 1, "float32")
    encoder._run = runner
    return encoder.embed(waveforms)


def test_every_committed_clip_pools_to_the_float32_vector():
    assert len(COMMITTED_CLIPS) >= 80
    waveforms = [load_audio(path, trim=False) for path in COMMITTED_CLIPS]
    fast = load_encoder(LAYERS, 1, ONNXRUNTIME).embed(waveforms)
    reference = _float32_vectors(waveforms)
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


def test_every_int8_weight_fits_in_7_bits_so_no_cpu_saturates(arrays):
    """Without VNNI a CPU sums pairs of uint8 x int8 products in int16: 255 * 63 * 2 fits,
    255 * 127 * 2 does not (graph.WEIGHT_LEVELS). Every quantised matrix must use 7 bits."""
    import onnx
    from onnx import numpy_helper

    from ser_worker.models.encoder.graph import WEIGHT_LEVELS

    model = onnx.load_from_string(encoder_graph(arrays, (6,)))
    matrices = [
        numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith("weight_int8")
    ]
    assert len(matrices) == 4 * ENCODER_BLOCKS  # attention's two maps and the feed-forward's two
    assert WEIGHT_LEVELS == 63
    assert all(m.dtype == np.int8 and np.abs(m).max() == WEIGHT_LEVELS for m in matrices)


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
