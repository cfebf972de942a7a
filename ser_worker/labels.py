"""The six emotion classes, in the fixed order every model output and confusion matrix uses."""

EMOTIONS: tuple[str, ...] = ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")
EMOTION_NAMES: dict[str, str] = {
    "ANG": "angry",
    "DIS": "disgust",
    "FEA": "fear",
    "HAP": "happy",
    "NEU": "neutral",
    "SAD": "sad",
}
MODEL_NAMES: tuple[str, ...] = ("cnn1d", "cnn2d")
# The pretrained speech encoder with its linear head (ser_worker.speech_encoder), when a bundle
# has one.
ENCODER = "encoder"
ENSEMBLE = "ensemble"


def emotion_index(code: str) -> int:
    return EMOTIONS.index(code)
