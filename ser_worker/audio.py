"""Decode an uploaded clip into the one waveform every later stage expects: float32 mono 16 kHz.

Anything a user can upload passes through here first, so every way a file can be unusable maps to
a typed `AudioError` with a stable `code` (stored with the failed item) and a message that says
what was wrong with which numbers. No raw libsndfile error leaves this module.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from ser_worker.config import Settings, get_settings
from ser_worker.features import dsp
from ser_worker.labels import SAMPLE_RATE, TRIM_TOP_DB

# Below this peak (-80 dBFS) a clip holds nothing a model can use; one 16-bit step is ~3e-5.
SILENCE_PEAK = 1e-4

# Trimming measures loudness on frames of this size; matching the feature frames keeps
# "what counts as silence" consistent with how the models see the clip.
_TRIM_FRAME = 2048
_TRIM_HOP = 512


class AudioError(ValueError):
    """An unusable clip: `code` is stable and machine-readable, the message is for people."""

    code: str = "audio_error"


class EmptyAudioError(AudioError):
    code = "empty"


class NotAudioError(AudioError):
    code = "not_audio"


class TruncatedAudioError(AudioError):
    code = "truncated"


class NonFiniteAudioError(AudioError):
    code = "non_finite"


class SilentAudioError(AudioError):
    code = "silent"


class NoSpeechError(AudioError):
    code = "no_speech"


class TooShortError(AudioError):
    code = "too_short"


class TooLongError(AudioError):
    code = "too_long"


class FileTooLargeError(AudioError):
    code = "too_large"


@dataclass(frozen=True)
class AudioLimits:
    max_bytes: int
    max_duration_s: float
    min_duration_s: float  # measured after trimming silence

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> AudioLimits:
        """The limits configured by SER_MAX_FILE_BYTES, SER_MAX_DURATION_S and SER_MIN_DURATION_S
        (their defaults live in Settings alone)."""
        settings = settings or get_settings()
        return cls(
            max_bytes=settings.max_file_bytes,
            max_duration_s=settings.max_duration_s,
            min_duration_s=settings.min_duration_s,
        )


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int
    duration_s: float
    format: str  # libsndfile's major format name: "WAV", "FLAC", "OGG", "MP3", ...


Source = str | os.PathLike | bytes

# libsndfile repairs a WAV whose data chunk is shorter than its header declares (it reports the
# frames actually present) and only notes the discrepancy in its log, e.g. "data : 32000 (should
# be 15978)". That log line is the one place the declared size survives.
_WAV_DATA_LOG = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


def _byte_size(source: Source) -> int:
    if isinstance(source, bytes | bytearray | memoryview):
        return len(source)
    return os.stat(source).st_size


def _head(source: Source, n: int) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source[:n])
    with open(source, "rb") as f:
        return f.read(n)


def _declared_riff_bytes(head: bytes) -> int | None:
    """The total file size a RIFF (WAV) header declares, or None when it is not RIFF or the
    writer left a placeholder (0 or 0xFFFFFFFF when streaming)."""
    if len(head) < 8 or head[:4] not in (b"RIFF", b"RIFX"):
        return None
    size = int.from_bytes(head[4:8], "little" if head[:4] == b"RIFF" else "big")
    return None if size in (0, 0xFFFFFFFF) else size + 8


# Writers that stream to a pipe cannot seek back to fill in the sizes, so they leave one of these
# in the RIFF and data size fields; libsndfile then reports no frames (0) or calls the file
# truncated (0xFFFFFFFF). Such a file holds exactly what follows the data header.
_STREAMING_SIZES = (0, 0xFFFFFFFF)


def _data_chunk(head: bytes) -> int | None:
    """Where a WAV's data chunk header starts, walking the chunks that precede it in `head`."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    position = 12
    while position + 8 <= len(head):
        if head[position : position + 4] == b"data":
            return position
        size = int.from_bytes(head[position + 4 : position + 8], "little")
        position += 8 + size + (size & 1)
    return None


def _streamed_wav(source: Source) -> bytes | None:
    """The WAV with its placeholder sizes replaced by the real ones; None when it has none."""
    head = _head(source, 4096)
    position = _data_chunk(head)
    if position is None:
        return None
    riff = int.from_bytes(head[4:8], "little")
    size = int.from_bytes(head[position + 4 : position + 8], "little")
    if size not in _STREAMING_SIZES and riff not in _STREAMING_SIZES:
        return None
    fixed = bytearray(_head(source, _byte_size(source)))
    fixed[4:8] = (len(fixed) - 8).to_bytes(4, "little")
    fixed[position + 4 : position + 8] = (len(fixed) - position - 8).to_bytes(4, "little")
    return bytes(fixed)


def _open(source: Source) -> sf.SoundFile:
    source = _streamed_wav(source) or source
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source
    try:
        return sf.SoundFile(stream)
    except (sf.SoundFileError, RuntimeError) as exc:
        reason = _libsndfile_reason(exc)
        if _head(source, 4) == b"OggS":
            # An Ogg stream cut after its first pages opens as "malformed": its header was there.
            raise TruncatedAudioError(
                f"OGG file is truncated or corrupt: its pages end early ({reason})"
            ) from exc
        # libsndfile calls a WAV cut off inside its header "malformed"; the RIFF size field says
        # how long the file was meant to be, which tells a truncated upload from a corrupt one.
        declared, size = _declared_riff_bytes(_head(source, 8)), _byte_size(source)
        if declared is not None and size < declared:
            raise TruncatedAudioError(
                f"WAV header is cut off: the RIFF header declares {declared:,} bytes but the file "
                f"has only {size:,}; the file is truncated ({reason})"
            ) from exc
        raise NotAudioError(f"file is not a readable audio file ({reason})") from exc


def _libsndfile_reason(exc: BaseException) -> str:
    # soundfile prefixes the message with the repr of the stream object, which means nothing to
    # the person who uploaded the file.
    message = str(exc)
    return message.split(": ", 1)[1] if message.startswith("Error opening") else message


def _check_size(source: Source, limits: AudioLimits) -> None:
    size = _byte_size(source)
    if size > limits.max_bytes:
        raise FileTooLargeError(
            f"file is {size:,} bytes; the maximum is {limits.max_bytes:,} bytes"
        )
    if size == 0:
        raise EmptyAudioError("file is empty (0 bytes)")


def _info(f: sf.SoundFile) -> AudioInfo:
    return AudioInfo(
        sample_rate=f.samplerate,
        channels=f.channels,
        frames=f.frames,
        duration_s=f.frames / f.samplerate,
        format=f.format,
    )


def probe(source: Source) -> AudioInfo:
    """Read only the header: format, rate, channels and declared length."""
    if _byte_size(source) == 0:
        raise EmptyAudioError("file is empty (0 bytes)")
    with _open(source) as f:
        return _info(f)


def _missing_wav_bytes(f: sf.SoundFile) -> tuple[int, int] | None:
    match = _WAV_DATA_LOG.search(f.extra_info)
    if match is None:
        return None
    declared, present = int(match.group(1)), int(match.group(2))
    # A declared size below what is present (0 or 0xFFFFFFFF from streaming writers) is harmless.
    return (declared, present) if declared > present else None


def _decode(f: sf.SoundFile, info: AudioInfo) -> np.ndarray:
    try:
        samples = f.read(frames=info.frames, dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError) as exc:
        raise TruncatedAudioError(
            f"{info.format} data could not be decoded to the end; the file is truncated or "
            f"corrupt ({exc})"
        ) from exc
    # MP3 has no exact length in its header (libsndfile estimates it), so a short read proves
    # nothing there; every other format states its length exactly.
    if info.format != "MP3" and samples.shape[0] < info.frames:
        raise TruncatedAudioError(
            f"header declares {info.frames} frames ({info.duration_s:.2f} s) but only "
            f"{samples.shape[0]} could be read; the file is truncated"
        )
    return samples


def load_audio(
    source: Source, limits: AudioLimits | None = None, *, trim: bool = True
) -> np.ndarray:
    """Decode a clip (path or raw bytes) into float32 mono at SAMPLE_RATE, edges trimmed.

    Raises an `AudioError` subclass for every unusable clip; a missing path raises the usual
    `FileNotFoundError` since that is the caller's fault, not the upload's. `limits` defaults to
    the configured ones (AudioLimits.from_settings).
    """
    limits = limits or AudioLimits.from_settings()
    _check_size(source, limits)
    with _open(source) as f:
        info = _info(f)
        # Decided from the header so a small, highly compressed file cannot make us allocate
        # hours of samples.
        if info.duration_s > limits.max_duration_s:
            raise TooLongError(
                f"clip is {info.duration_s:.1f} s long; the maximum is {limits.max_duration_s:g} s"
            )
        missing = _missing_wav_bytes(f)
        if missing is not None:
            declared, present = missing
            raise TruncatedAudioError(
                f"WAV header declares {declared:,} bytes of audio but only {present:,} are "
                "present; the file is truncated"
            )
        if info.frames == 0 and info.format == "OGG":
            # libsndfile counts an Ogg stream's frames from its last page: a cut stream has none.
            raise TruncatedAudioError("OGG file has no complete audio page; the file is truncated")
        if info.frames == 0:
            raise EmptyAudioError(f"{info.format} file contains no audio frames")
        samples = _decode(f, info)

    n_bad = int(np.count_nonzero(~np.isfinite(samples)))
    if n_bad:
        raise NonFiniteAudioError(f"clip contains {n_bad} NaN or infinite samples")
    y = _mono(samples)
    # Before trimming: trim measures loudness relative to the peak, which is meaningless when
    # there is no signal at all.
    peak = float(np.max(np.abs(y)))
    if peak < SILENCE_PEAK:
        raise SilentAudioError(
            f"clip is silent (peak amplitude {peak:.2g}, below {SILENCE_PEAK:g})"
        )
    if float(np.max(np.abs(y - y.mean()))) < SILENCE_PEAK:
        raise NoSpeechError(f"clip holds no sound, only a constant offset of {float(y.mean()):.2g}")
    if peak > 1.0:
        # Float files may exceed full scale; far beyond it, squaring overflows float32 in the
        # trimming and features. Above full scale the level means nothing: scale to it.
        y = (y / peak).astype(np.float32)

    if info.sample_rate != SAMPLE_RATE:
        y = resample(y, info.sample_rate)
    if trim:
        return trim_silence(y, limits)
    check_duration(y, limits)
    return np.ascontiguousarray(y, dtype=np.float32)


def _mono(samples: np.ndarray) -> np.ndarray:
    """The channels' mean, unless they cancel out (a phase-inverted pair, as some stereo
    recorders and broken cables make): then the loudest channel alone."""
    if samples.shape[1] == 1:
        return samples[:, 0]
    mean = samples.mean(axis=1)
    rms = np.sqrt(np.mean(np.square(samples, dtype=np.float64), axis=0))
    # The mean of in-phase channels keeps most of their energy; cancelling ones keep almost none.
    if np.sqrt(np.mean(np.square(mean, dtype=np.float64))) < 0.1 * float(rms.max()):
        return np.ascontiguousarray(samples[:, int(np.argmax(rms))])
    return mean


def trim_silence(
    y: np.ndarray, limits: AudioLimits | None = None, top_db: float = TRIM_TOP_DB
) -> np.ndarray:
    """A decoded clip (load_audio(..., trim=False)) with its leading and trailing silence cut,
    as load_audio trims; TooShortError if less than the minimum duration is left."""
    limits = limits or AudioLimits.from_settings()
    y = _trimmed(y, top_db)
    check_duration(y, limits, " after trimming silence")
    return np.ascontiguousarray(y, dtype=np.float32)


def _trimmed(y: np.ndarray, top_db: float) -> np.ndarray:
    """librosa.effects.trim(y, top_db, _TRIM_FRAME, _TRIM_HOP)[0] for mono y, bit for bit, by the
    same operations in numpy (features.dsp): librosa.effects loads scikit-learn and numba, which
    an inference worker needs for nothing else."""
    rms = dsp.rms(y, _TRIM_FRAME, _TRIM_HOP)
    loud = np.flatnonzero(dsp.amplitude_to_db(rms) > -top_db)
    if loud.size == 0:
        return y[:0]
    start = int(loud[0]) * _TRIM_HOP
    end = (int(loud[-1]) + 1) * _TRIM_HOP
    return y[start : min(len(y), end)]


def resample(y: np.ndarray, sampling_rate: int) -> np.ndarray:
    """`y` (mono) at SAMPLE_RATE, by soxr's high-quality resampler."""
    if sampling_rate == SAMPLE_RATE:
        return y
    return soxr.resample(y, sampling_rate, SAMPLE_RATE, quality="HQ")


def check_duration(y: np.ndarray, limits: AudioLimits, after: str = "") -> None:
    """TooShortError when `y` (at SAMPLE_RATE) is shorter than the minimum duration."""
    duration_s = y.shape[0] / SAMPLE_RATE
    if duration_s < limits.min_duration_s:
        raise TooShortError(
            f"clip is {duration_s:.2f} s{after}; the minimum is {limits.min_duration_s:g} s"
        )
