"""The study's features (ZCR, frame energy, log-mel) and the fixed-size inputs of the two CNNs.

Every per-frame feature uses the same centred framing (frame 2048, hop 512, half a frame of padding
on each side), so a clip of N samples always gives exactly 1 + N // 512 frames in all three.
This module runs on the worker hot path: everything is vectorised over frames.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from ser_worker.features import dsp
from ser_worker.labels import SAMPLE_RATE

# Default 2D window, chosen by measuring trimmed clip lengths (librosa trim, top_db 60, the
# audio.load_audio default) over the six-class clips of the shared corpora, in 512-sample frames:
#
#   corpus   clips  p50  p75  p90  p95  p99  max
#   RAVDESS    880  105  113  122  128  138  157
#   TESS      2400   65   73   79   82   86   94
#   both      3280   69   82  109  116  130  157
#
# 112 frames (3.58 s) covers 92.7% of both (100% of TESS, 73% of RAVDESS) and CREMA-D's ~2.5 s
# clips. The RAVDESS clips it crops are long mostly because their room noise sits within 60 dB of
# the speech, so trimming keeps it; the centred crop drops that noise, not speech. The 2D network
# halves time four times, hence a multiple of 16.
DEFAULT_MEL_FRAMES = 112
_MEL_POOL_FACTOR = 16

# A feature that is constant over the training set has no spread to standardise by; dividing by 1
# keeps it at zero instead of exploding.
_MIN_STD = 1e-8


@dataclass(frozen=True)
class FeatureSettings:
    sample_rate: int = SAMPLE_RATE
    frame_length: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    seq_frames: int = 400
    mel_frames: int = DEFAULT_MEL_FRAMES
    # Per-utterance normalisation: each mel band's mean over the clip is subtracted before the
    # training-set standardisation, as cepstral mean normalisation does, so that a recording's
    # channel and a speaker's average spectrum weigh less than how the spectrum moves.
    subtract_clip_mean: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.subtract_clip_mean, bool):
            raise ValueError(f"subtract_clip_mean must be a bool, got {self.subtract_clip_mean!r}")
        for field in fields(self):
            if field.name == "subtract_clip_mean":
                continue
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{field.name} must be a positive integer, got {value!r}")
        if self.mel_frames % _MEL_POOL_FACTOR:
            raise ValueError(
                f"mel_frames must be a multiple of {_MEL_POOL_FACTOR} (four 2x2 pools in the 2D "
                f"network), got {self.mel_frames}"
            )

    @property
    def input_length_1d(self) -> int:
        return 2 * self.seq_frames

    @property
    def input_shape_1d(self) -> tuple[int, int]:
        """One clip's input to the 1D network: zcr then energy, one channel."""
        return (self.input_length_1d, 1)

    @property
    def input_shape_2d(self) -> tuple[int, int, int]:
        """One clip's input to the 2D network: a log-mel window, one channel."""
        return (self.n_mels, self.mel_frames, 1)

    def to_dict(self) -> dict[str, int | bool]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSettings:
        return cls(**data)


@dataclass
class ClipFeatures:
    """Unpadded per-frame features of one clip; all three share the frame axis."""

    zcr: np.ndarray  # (n,)
    energy: np.ndarray  # (n,)
    mel_db: np.ndarray  # (n_mels, n)

    @property
    def n_frames(self) -> int:
        return self.zcr.shape[0]


# librosa.zero_crossings' default: samples within this of zero count as zero (positive sign).
_ZC_THRESHOLD = 1e-10


def zero_crossing_rate(y: np.ndarray, s: FeatureSettings) -> np.ndarray:
    """librosa.feature.zero_crossing_rate(y, center=True), bit for bit, in one pass over y.

    librosa frames the edge-padded signal and tests every sample of every frame, four times per
    sample at hop = frame / 4; here each crossing is found once and counted per frame from a
    cumulative sum. A crossing sits between samples j-1 and j when exactly one of them is below
    -threshold (librosa zeroes |x| <= threshold and counts 0 as positive); a frame counts the
    crossings at its positions 1..frame_length-1 and divides by frame_length.
    """
    half = s.frame_length // 2
    negative = np.pad(y < -y.dtype.type(_ZC_THRESHOLD), (half, half), mode="edge")
    cumulative = np.zeros(negative.shape[0], dtype=np.int64)
    np.cumsum(negative[1:] != negative[:-1], out=cumulative[1:])
    starts = np.arange(0, negative.shape[0] - s.frame_length + 1, s.hop_length)
    counts = cumulative[starts + s.frame_length - 1] - cumulative[starts]
    return (counts / s.frame_length).astype(np.float32)


def frame_energy(y: np.ndarray, s: FeatureSettings) -> np.ndarray:
    """Mean of squared samples per frame (the study's sum of squares / frame length)."""
    # Zero padding, as melspectrogram pads, so frame i is centred on sample i * hop in both.
    half = s.frame_length // 2
    padded = np.pad(y.astype(np.float64, copy=False), (half, half))
    frames = dsp.frame(padded, s.frame_length, s.hop_length)
    energy = np.einsum("ij,ij->j", frames, frames) / s.frame_length
    return energy.astype(np.float32)


def log_mel(y: np.ndarray, s: FeatureSettings) -> np.ndarray:
    """librosa.power_to_db(librosa.feature.melspectrogram(...), ref=np.max), bit for bit.

    The same operations as librosa.feature.melspectrogram (in numpy: features.dsp), except that
    the mel filter bank, which librosa rebuilds on every call, is built once per setting.
    """
    power = np.abs(dsp.stft(y, s.frame_length, s.hop_length)) ** 2.0
    mel = np.einsum(
        "...ft,mf->...mt",
        power,
        dsp.mel_filters(s.sample_rate, s.frame_length, s.n_mels),
        optimize=True,
    )
    return dsp.power_to_db(mel).astype(np.float32, copy=False)


def extract(y: np.ndarray, settings: FeatureSettings) -> ClipFeatures:
    """Features of a mono waveform already at settings.sample_rate (see audio.load_audio)."""
    if y.ndim != 1 or y.shape[0] == 0:
        raise ValueError(f"expected a non-empty mono waveform, got shape {y.shape}")
    y = y.astype(np.float32, copy=False)
    features = ClipFeatures(
        zcr=zero_crossing_rate(y, settings),
        energy=frame_energy(y, settings),
        mel_db=log_mel(y, settings),
    )
    return per_clip_normalised(features, settings)


def per_clip_normalised(features: ClipFeatures, settings: FeatureSettings) -> ClipFeatures:
    """What `extract` returns for these raw features under `settings` (see subtract_clip_mean)."""
    if not settings.subtract_clip_mean:
        return features
    mel_db = features.mel_db - features.mel_db.mean(axis=1, keepdims=True)
    return ClipFeatures(zcr=features.zcr, energy=features.energy, mel_db=mel_db)


@dataclass
class Normalizer:
    """Standardisation fitted on training clips: scalars for zcr and energy, per band for mels."""

    zcr_mean: float
    zcr_std: float
    energy_mean: float
    energy_std: float
    mel_mean: np.ndarray  # (n_mels,)
    mel_std: np.ndarray  # (n_mels,)

    def to_dict(self) -> dict[str, Any]:
        return {
            "zcr_mean": self.zcr_mean,
            "zcr_std": self.zcr_std,
            "energy_mean": self.energy_mean,
            "energy_std": self.energy_std,
            "mel_mean": self.mel_mean.tolist(),
            "mel_std": self.mel_std.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Normalizer:
        return cls(
            zcr_mean=float(data["zcr_mean"]),
            zcr_std=float(data["zcr_std"]),
            energy_mean=float(data["energy_mean"]),
            energy_std=float(data["energy_std"]),
            mel_mean=np.asarray(data["mel_mean"], dtype=np.float32),
            mel_std=np.asarray(data["mel_std"], dtype=np.float32),
        )


def _mean_std(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std along the last axis over all arrays, without concatenating them.

    Two passes in float64 (exact, unlike sum-of-squares), streaming so a large training set
    never needs one giant array.
    """
    count = sum(a.shape[-1] for a in arrays)
    mean = sum(a.sum(axis=-1, dtype=np.float64) for a in arrays) / count
    var = sum(np.square(a - mean[..., None]).sum(axis=-1) for a in arrays) / count
    std = np.sqrt(var)
    return mean, np.where(std < _MIN_STD, 1.0, std)


def fit_normalizer(features: Sequence[ClipFeatures]) -> Normalizer:
    """Fit on every real frame of the given (training) clips; padding never enters the stats."""
    if not features:
        raise ValueError("cannot fit a normalizer on zero clips")
    zcr_mean, zcr_std = _mean_std([f.zcr[None, :] for f in features])
    energy_mean, energy_std = _mean_std([f.energy[None, :] for f in features])
    mel_mean, mel_std = _mean_std([f.mel_db for f in features])
    return Normalizer(
        zcr_mean=float(zcr_mean[0]),
        zcr_std=float(zcr_std[0]),
        energy_mean=float(energy_mean[0]),
        energy_std=float(energy_std[0]),
        mel_mean=mel_mean.astype(np.float32),
        mel_std=mel_std.astype(np.float32),
    )


def _fit_length(x: np.ndarray, length: int) -> np.ndarray:
    # Keep the start: trimmed clips begin at speech onset, and the training clips (all shorter
    # than seq_frames) are laid out that way too.
    out = np.zeros(length, dtype=np.float32)
    n = min(length, x.shape[0])
    out[:n] = x[:n]
    return out


def input_1d(
    features: ClipFeatures, settings: FeatureSettings, normalizer: Normalizer
) -> np.ndarray:
    """(2 * seq_frames, 1): standardised zcr then energy, each cropped or padded to seq_frames.

    Padding comes after standardising, so a padded frame equals the training mean.
    """
    zcr = (features.zcr - normalizer.zcr_mean) / normalizer.zcr_std
    energy = (features.energy - normalizer.energy_mean) / normalizer.energy_std
    sequence = np.concatenate(
        [_fit_length(zcr, settings.seq_frames), _fit_length(energy, settings.seq_frames)]
    )
    return sequence[:, None]


def input_2d(
    features: ClipFeatures,
    settings: FeatureSettings,
    normalizer: Normalizer,
    offset: int | None = None,
) -> np.ndarray:
    """(n_mels, mel_frames, 1): per-band standardised log-mel, a window of mel_frames.

    Longer clips are cropped at `offset` (None: centred; training passes random offsets in
    [0, n_frames - mel_frames]); shorter clips are zero-padded (= band mean) around the centre.
    """
    n_mels, n = features.mel_db.shape
    if n_mels != settings.n_mels or normalizer.mel_mean.shape != (n_mels,):
        raise ValueError(
            f"mel bands disagree: features {n_mels}, settings {settings.n_mels}, "
            f"normalizer {normalizer.mel_mean.shape[0]}"
        )
    width = settings.mel_frames
    slack = max(n - width, 0)
    if offset is None:
        offset = slack // 2
    elif not 0 <= offset <= slack:
        raise ValueError(f"offset {offset} outside [0, {slack}] for a clip of {n} frames")

    window = features.mel_db[:, offset : offset + width]
    out = np.zeros((n_mels, width, 1), dtype=np.float32)
    start = (width - window.shape[1]) // 2
    out[:, start : start + window.shape[1], 0] = (
        window - normalizer.mel_mean[:, None]
    ) / normalizer.mel_std[:, None]
    return out


def inputs_1d(
    features_list: Sequence[ClipFeatures], settings: FeatureSettings, normalizer: Normalizer
) -> np.ndarray:
    """input_1d of every clip, stacked: (N, 2 * seq_frames, 1)."""
    return _stacked(input_1d, settings.input_shape_1d, features_list, settings, normalizer)


def inputs_2d(
    features_list: Sequence[ClipFeatures], settings: FeatureSettings, normalizer: Normalizer
) -> np.ndarray:
    """input_2d of every clip (centred windows), stacked: (N, n_mels, mel_frames, 1)."""
    return _stacked(input_2d, settings.input_shape_2d, features_list, settings, normalizer)


def _stacked(one, shape, features_list, settings, normalizer) -> np.ndarray:
    x = np.empty((len(features_list), *shape), dtype=np.float32)
    for i, features in enumerate(features_list):
        x[i] = one(features, settings, normalizer)
    return x


def batch_inputs(
    features_list: Sequence[ClipFeatures], settings: FeatureSettings, normalizer: Normalizer
) -> tuple[np.ndarray, np.ndarray]:
    """Stacked inputs of both networks: (inputs_1d, inputs_2d)."""
    return (
        inputs_1d(features_list, settings, normalizer),
        inputs_2d(features_list, settings, normalizer),
    )
