"""The rules every stage shares, stated once: the six emotion classes (in the fixed order of every
model output and confusion matrix), the sample rate every stage works at, and the names of a
bundle's members."""

EMOTIONS: tuple[str, ...] = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
EMOTION_NAMES: dict[str, str] = {
    "ANG": "angry",
    "DIS": "disgust",
    "FEA": "fear",
    "HAP": "happy",
    "NEU": "neutral",
    "SAD": "sad",
}

# Every decoded clip is float32 mono at this rate: the CNN features, the speech encoder (Whisper
# was trained at 16 kHz) and the augmentations all assume it.
SAMPLE_RATE = 16_000

# The members a bundle can hold: the study's two CNNs, and the pretrained speech encoder with
# its linear head (ser_worker.models.encoder). ENSEMBLE names their weighted mix.
CNN1D = "cnn1d"
CNN2D = "cnn2d"
MODEL_NAMES: tuple[str, ...] = (CNN1D, CNN2D)
ENCODER = "encoder"
ENSEMBLE = "ensemble"
MEMBERS: tuple[str, ...] = (*MODEL_NAMES, ENCODER)
RESULT_MODELS: tuple[str, ...] = (*MEMBERS, ENSEMBLE)

# How the encoder's head reads a clip's frames (models.encoder.pooling): every frame alike, or
# that beside the frames weighted by their speech probability. Bundles record theirs; those that
# record none read POOL_ALL.
POOL_ALL = "all"
POOL_ALL_SOFT = "all+soft"
ENCODER_POOLINGS: tuple[str, ...] = (POOL_ALL, POOL_ALL_SOFT)

# The CNNs read clips with their edges cut where the signal stays this many dB below its peak
# (librosa.effects.trim's default, as in the study). Bundles record it (bundle.manifest).
TRIM_TOP_DB = 60.0

# New bundles' members read every clip scaled to this BS.1770 integrated loudness (LUFS), so the
# recording level cannot decide the emotion (ser_worker.loudness; recorded in each manifest). EBU
# R128's programme level; speech corpora sit from about -45 (RAVDESS) to -20 LUFS.
TARGET_LUFS = -23.0

# Training epochs when nobody says otherwise: `ser-cli train`, scheduled retraining, TrainConfig.
DEFAULT_EPOCHS = 30


def emotion_index(code: str) -> int:
    return EMOTIONS.index(code)
