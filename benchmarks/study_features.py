"""The study's feature extraction (the Kaggle-style CREMA-D notebook), as the baseline to beat.

Per clip: ``librosa.load(path, sr=16000)``, ``librosa.effects.trim``, librosa's zero-crossing
rate, frame energy as a Python loop ``sum(abs(y[i:i+2048]**2))`` and
``librosa.power_to_db(librosa.feature.melspectrogram(...), ref=np.max)``.

Two deliberate departures, so that "same outputs" can be checked value for value against
``ser_worker.features.study.extract`` (neither changes the study's cost):

* the energy loop runs over the same centred framing as ours (half a frame of zeros on each side,
  one frame per hop, ``1 + len(y) // hop`` frames) instead of the study's uncentred
  ``range(0, len(y), hop)``, whose last frames are shorter and whose frame i is shifted by half a
  frame against the ZCR and mel frames;
* the loop's sum of squares is divided by the frame length (ours is the mean of squares; a
  constant factor that standardisation removes anyway).

The loop itself is the study's: Python's ``sum`` over float32 numpy scalars, so it accumulates
in float32 and differs from ours (float64) by rounding only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np

from ser_worker.features.study import ClipFeatures, FeatureSettings

DEFAULT_SETTINGS = FeatureSettings()


def study_load(path: str | Path, settings: FeatureSettings = DEFAULT_SETTINGS) -> np.ndarray:
    """``librosa.load`` at the feature rate, then ``librosa.effects.trim`` (top_db 60)."""
    y, _ = librosa.load(path, sr=settings.sample_rate)
    y, _ = librosa.effects.trim(
        y, top_db=60, frame_length=settings.frame_length, hop_length=settings.hop_length
    )
    return y


def study_energy(y: np.ndarray, settings: FeatureSettings = DEFAULT_SETTINGS) -> np.ndarray:
    """The study's Python loop of sums of squares, on the centred framing, per frame length."""
    n, hop = settings.frame_length, settings.hop_length
    padded = np.pad(y, (n // 2, n // 2))
    energy = np.array(
        [sum(abs(padded[i : i + n] ** 2)) for i in range(0, len(padded) - n + 1, hop)]
    )
    return (energy / n).astype(np.float32)


def study_features(y: np.ndarray, settings: FeatureSettings = DEFAULT_SETTINGS) -> ClipFeatures:
    """ZCR, loop energy and log-mel of a loaded clip, the study's way."""
    zcr = librosa.feature.zero_crossing_rate(
        y, frame_length=settings.frame_length, hop_length=settings.hop_length
    )[0]
    mel = librosa.feature.melspectrogram(
        y=y,
        sr=settings.sample_rate,
        n_fft=settings.frame_length,
        hop_length=settings.hop_length,
        n_mels=settings.n_mels,
    )
    return ClipFeatures(
        zcr=zcr.astype(np.float32),
        energy=study_energy(y, settings),
        mel_db=librosa.power_to_db(mel, ref=np.max).astype(np.float32),
    )


def study_extract(path: str | Path, settings: FeatureSettings = DEFAULT_SETTINGS) -> ClipFeatures:
    """One clip from its file to its three features, as the study does it."""
    return study_features(study_load(path, settings), settings)


# Float32 summation in the study's loop against float64 in ours: a few ulps of a 2048-term sum.
ENERGY_RTOL = 1e-4
MEL_ATOL_DB = 1e-3


@dataclass
class Agreement:
    zcr_max_abs: float
    energy_max_rel: float
    mel_max_abs_db: float
    frames_equal: bool

    @property
    def ok(self) -> bool:
        return (
            self.frames_equal
            and self.zcr_max_abs == 0.0
            and self.energy_max_rel <= ENERGY_RTOL
            and self.mel_max_abs_db <= MEL_ATOL_DB
        )

    def merge(self, other: Agreement) -> Agreement:
        return Agreement(
            max(self.zcr_max_abs, other.zcr_max_abs),
            max(self.energy_max_rel, other.energy_max_rel),
            max(self.mel_max_abs_db, other.mel_max_abs_db),
            self.frames_equal and other.frames_equal,
        )


def agreement(study: ClipFeatures, ours: ClipFeatures) -> Agreement:
    """How far the study's features are from ours; energy relative to the clip's loudest frame
    (a 2048-term float32 sum is only accurate relative to its magnitude, not to a near-silent
    frame's own tiny value)."""
    if (
        study.zcr.shape != ours.zcr.shape
        or study.energy.shape != ours.energy.shape
        or study.mel_db.shape != ours.mel_db.shape
    ):
        return Agreement(np.inf, np.inf, np.inf, False)
    scale = max(float(np.max(np.abs(ours.energy))), np.finfo(np.float32).tiny)
    return Agreement(
        zcr_max_abs=float(np.max(np.abs(study.zcr - ours.zcr))),
        energy_max_rel=float(np.max(np.abs(study.energy.astype(np.float64) - ours.energy) / scale)),
        mel_max_abs_db=float(np.max(np.abs(study.mel_db - ours.mel_db))),
        frames_equal=True,
    )
