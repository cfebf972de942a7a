"""A pretrained speech encoder beside the two CNNs: Whisper base's encoder, pooled per clip,
read by a linear head.

Why: the two study CNNs, trained from scratch on 22 speakers, reach about 0.54 macro-F1 on
RAVDESS actors they never heard. An encoder pretrained on 680,000 hours of speech carries
speaker-independent cues those 22 speakers cannot teach; a linear head on its pooled output
is cheap to train on CPU and reaches about 0.78 on the same folds (docs/RESULTS.md).

``frontend``: Whisper's log-mel features and windows; ``weights``: the pinned weight packages,
their arrays and the cut model files; ``graph``: the encoder as one ONNX graph; ``cache``: that
graph kept under SER_DATA_DIR between processes; ``encoder``: SpeechEncoder (ONNX Runtime or
CTranslate2); ``pooling``: how a clip's frames become one vector; ``head``: LinearHead.
"""

from ser_worker.models.encoder.encoder import (
    BACKENDS,
    BATCH_WINDOWS,
    CTRANSLATE2,
    LAYERS,
    ONNXRUNTIME,
    SpeechEncoder,
    check_layers,
    embedding_size,
    load_encoder,
)
from ser_worker.models.encoder.frontend import (
    HOP,
    N_FFT,
    N_MELS,
    WINDOW_FRAMES,
    WINDOW_SECONDS,
    encoder_windows,
    whisper_log_mel,
)
from ser_worker.models.encoder.head import (
    MIN_ADAPT_CLIPS,
    LinearHead,
    fit_adapted_head,
    fit_linear_head,
    standardised_by_set,
)
from ser_worker.models.encoder.pooling import (
    POOLING,
    check_pooling,
    pool,
)
from ser_worker.models.encoder.weights import (
    ENCODER_BLOCKS,
    ENCODER_NAME,
    ENCODER_STRIDE,
    ENCODER_WIDTH,
    LICENCE,
    MODEL_SHA256,
    EncoderUnavailable,
    encoder_arrays,
    model_files,
    verified_weight_parts,
)

__all__ = [
    "POOLING",
    "check_pooling",
    "BACKENDS",
    "BATCH_WINDOWS",
    "CTRANSLATE2",
    "ENCODER_BLOCKS",
    "ENCODER_NAME",
    "ENCODER_STRIDE",
    "ENCODER_WIDTH",
    "HOP",
    "LAYERS",
    "LICENCE",
    "MODEL_SHA256",
    "N_FFT",
    "N_MELS",
    "ONNXRUNTIME",
    "WINDOW_FRAMES",
    "WINDOW_SECONDS",
    "EncoderUnavailable",
    "MIN_ADAPT_CLIPS",
    "LinearHead",
    "SpeechEncoder",
    "check_layers",
    "embedding_size",
    "encoder_arrays",
    "encoder_windows",
    "fit_adapted_head",
    "fit_linear_head",
    "load_encoder",
    "model_files",
    "pool",
    "standardised_by_set",
    "verified_weight_parts",
    "whisper_log_mel",
]
