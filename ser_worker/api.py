"""The Python API: a bundle's predictions in process, without Celery or a database.

``Recognizer`` decodes files as the service does (the same limits, the same error codes) and
predicts them through ``Bundle.predict_prepared``, the service's own entry point, so a notebook
and the worker give the same answer for the same clip. TensorFlow loads when the first
Recognizer is built, not on import.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ser_worker.bundle.records import MemberPrediction, PreparedClip
from ser_worker.labels import ENSEMBLE

if TYPE_CHECKING:
    import numpy as np

    from ser_worker.audio import AudioLimits
    from ser_worker.bundle import Bundle

__all__ = ["Prediction", "Recognizer"]


@dataclass(frozen=True)
class Prediction:
    """The ensemble's answer for one clip, with each member's; or why the clip is unusable.

    A failed clip has `emotion` None and `error_code` set (the service's codes: "empty",
    "not_audio", "too_short", ..., "decode_error" for a decoder crash, "unreadable" for a file
    that cannot be read). `uncertain`: the ensemble's best class holds less than the bundle's
    threshold (its calibration's `uncertain_below`); None for a failed clip.
    """

    emotion: str | None
    confidence: float | None
    probabilities: dict[str, float]
    model_version: str
    per_member: dict[str, MemberPrediction] = field(default_factory=dict)
    path: str | None = None
    error_code: str | None = None
    error: str | None = None
    uncertain: bool | None = None

    @property
    def ok(self) -> bool:
        return self.error_code is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "emotion": self.emotion,
            "confidence": self.confidence,
            "probabilities": dict(self.probabilities),
            "uncertain": self.uncertain,
            "model_version": self.model_version,
            "per_member": {name: p.to_dict() for name, p in self.per_member.items()},
            "error_code": self.error_code,
            "error": self.error,
        }


class Recognizer:
    """Predicts with one bundle: the shipped default, or the zip at `bundle`."""

    def __init__(
        self, bundle: str | os.PathLike | bytes | None = None, *, limits: AudioLimits | None = None
    ) -> None:
        from ser_worker.audio import AudioLimits
        from ser_worker.bundle import BundleError, load_bundle, shipped_bundle_bytes

        source = shipped_bundle_bytes() if bundle is None else bundle
        if source is None:
            raise BundleError("this installation ships no default bundle: pass one")
        self.bundle: Bundle = load_bundle(source)
        self.limits = limits or AudioLimits.from_settings()

    @property
    def model_version(self) -> str:
        return self.bundle.version

    def predict_file(self, path: str | os.PathLike) -> Prediction:
        return self.predict_files([path])[0]

    def predict_files(
        self, paths: Iterable[str | os.PathLike], *, batch_size: int = 64, adapt: bool = False
    ) -> list[Prediction]:
        """One Prediction per path, in order; an unusable file gives its error, not an exception.

        `adapt`: per-submission adaptation. The files are one set from one recording setup, and
        every usable one is predicted in one call with the speech encoder's vectors standardised
        by the set's own statistics, so each answer depends on the others. ValueError when the
        bundle cannot adapt (``bundle.can_adapt``) or fewer than MIN_ADAPT_CLIPS files are usable.
        """
        paths = [os.fspath(p) for p in paths]
        if adapt:
            return self._predict_adapted(paths, batch_size)
        results: list[Prediction] = []
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            results.extend(self._predict(chunk, [self._decode(p) for p in chunk], batch_size))
        return results

    def _predict_adapted(self, paths: list[str], batch_size: int) -> list[Prediction]:
        from ser_worker.bundle.core import check_adaptable

        check_adaptable(self.bundle, len(paths))  # cannot adapt, or too few files at all
        decoded = [self._decode(p) for p in paths]
        usable = sum(isinstance(clip, PreparedClip) for clip in decoded)
        try:
            check_adaptable(self.bundle, usable)
        except ValueError as error:
            raise ValueError(f"{error}: {usable} of {len(paths)} files are usable") from None
        return self._predict(paths, decoded, batch_size, adapt=True)

    def predict_signal(self, signal: np.ndarray, sampling_rate: int) -> Prediction:
        """A signal (float, full scale 1.0; mono, or frames x channels) at any rate, checked and
        resampled as an uploaded file is."""
        import numpy as np
        import soundfile as sf

        # Through a float WAV and the service's decoder: the same checks, codes and resampling.
        buffer = io.BytesIO()
        y = np.asarray(signal, dtype=np.float32)
        sf.write(buffer, y, sampling_rate, format="WAV", subtype="FLOAT")
        data = buffer.getvalue()
        # A signal has no upload size: only the duration limits apply.
        limits = replace(self.limits, max_bytes=max(self.limits.max_bytes, len(data)))
        return self._predict([None], [self._decode(data, limits)], 1)[0]

    def _decode(
        self, source: str | bytes, limits: AudioLimits | None = None
    ) -> PreparedClip | tuple[str, str]:
        """The clip as the bundle's members read it, or (error_code, message)."""
        from ser_worker.audio import SAMPLE_RATE, AudioError, load_audio

        limits = limits or self.limits
        try:
            return self.bundle.prepare(load_audio(source, limits, trim=False), SAMPLE_RATE, limits)
        except AudioError as error:
            return error.code, str(error)
        except OSError as error:  # as `ser-cli` reports a file it cannot read
            return "unreadable", f"cannot read file: {error.strerror or error}"
        except Exception as error:  # a decoder bug on odd input fails this clip, not the batch
            return "decode_error", f"{type(error).__name__}: {error}"

    def _predict(
        self,
        paths: Sequence[str | None],
        decoded: Sequence[PreparedClip | tuple[str, str]],
        batch_size: int,
        *,
        adapt: bool = False,
    ) -> list[Prediction]:
        good = [clip for clip in decoded if isinstance(clip, PreparedClip)]
        answers = iter(self.bundle.predict_prepared(good, batch_size=batch_size, adapt=adapt))
        results = []
        for path, clip in zip(paths, decoded, strict=True):
            if isinstance(clip, PreparedClip):
                results.append(self._prediction(path, next(answers)))
            else:
                code, message = clip
                results.append(
                    Prediction(None, None, {}, self.model_version, {}, path, code, message)
                )
        return results

    def _prediction(self, path: str | None, by_member: dict[str, MemberPrediction]) -> Prediction:
        ensemble = by_member[ENSEMBLE]
        return Prediction(
            emotion=ensemble.emotion,
            confidence=ensemble.confidence,
            probabilities=dict(ensemble.probabilities),
            model_version=self.model_version,
            per_member={name: p for name, p in by_member.items() if name != ENSEMBLE},
            path=path,
            uncertain=ensemble.uncertain,
        )
