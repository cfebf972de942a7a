"""The check a bundle passes before it may serve: it loads, and it predicts a built-in clip with
finite probabilities from every member.

CRCs and the checksum only prove the bytes are the ones registered; weights that are garbage
(NaN, the wrong tensors) or an ensemble weight of Infinity pass them and then fail every clip
once active. Keras, onnxruntime and the speech encoder load here, on first use.
"""

import numpy as np

from ser_worker.bundle.manifest import BundleError
from ser_worker.labels import SAMPLE_RATE

# A voiced stretch long enough for every member after trimming, short enough to cost little.
_VOICED_S = 1.5
_MARGIN_S = 0.3


def built_in_clip(sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A speech-like signal: a 150 Hz harmonic tone modulated at 4 Hz like syllables, between two
    stretches of silence. Made, not stored: the check needs no data file."""
    t = np.arange(int(_VOICED_S * sample_rate)) / sample_rate
    harmonics = [k for k in range(1, 20) if k * 150 < 0.45 * sample_rate]
    tone = sum(np.sin(2 * np.pi * k * 150 * t) / k for k in harmonics)
    envelope = 0.1 + 0.45 * (1 - np.cos(2 * np.pi * 4 * t))
    voiced = 0.3 * tone / np.max(np.abs(tone)) * envelope
    margin = np.zeros(int(_MARGIN_S * sample_rate))
    return np.concatenate([margin, voiced, margin]).astype(np.float32)


def check_bundle_predicts(data: bytes) -> None:
    """Raise BundleError unless the bundle in ``data`` loads and predicts the built-in clip."""
    from ser_worker.bundle.archive import load_bundle

    bundle = load_bundle(data)
    try:
        (answers,) = bundle.predict([built_in_clip()], SAMPLE_RATE)
    except BundleError:
        raise
    except Exception as error:  # Keras, onnxruntime and the encoder raise many unrelated types
        raise BundleError(f"the model cannot predict a test clip: {error}") from error
    for member, answer in answers.items():
        values = np.array([answer.confidence, *answer.probabilities.values()], dtype=np.float64)
        if not np.all(np.isfinite(values)):
            raise BundleError(
                f"the model's {member} gives non-finite probabilities on a test clip "
                "(NaN or infinite weights)"
            )
