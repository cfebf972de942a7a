"""How a recording channel changes a clip: gain, noise, band limits, telephone, lossy codecs and
rooms. Pure, seeded functions of a 16 kHz float signal, length-preserving.

Two uses: training copies that teach every member that these do not change the emotion
(``random_channel``), and the conditions the robustness report measures under
(research/robustness.py). Every random draw comes from the caller's Generator.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from ser_worker.labels import SAMPLE_RATE

_TINY = 1e-12
TELEPHONE_RATE = 8_000
TELEPHONE_BAND_HZ = (300.0, 3400.0)
# What a training copy draws from (random_channel).
SNR_RANGE_DB = (5.0, 30.0)
GAIN_RANGE_DB = (-20.0, 20.0)
RT60_RANGE_S = (0.2, 0.9)
# A talker a metre or two from the microphone in a furnished room.
DIRECT_TO_REVERBERANT_DB = 3.0
MP3_BITRATES = (32, 48, 64)
NOISE_COLOURS = ("white", "pink", "brown")
# Clips a babble copy draws its talkers from (spread over the speaker's clips).
BABBLE_POOL = 8
CHANNELS = ("noise", "babble", "telephone", "band", "mp3", "opus", "reverb")


def gain(y: np.ndarray, db: float) -> np.ndarray:
    return (y * 10.0 ** (db / 20.0)).astype(np.float32)


def peak_normalised(y: np.ndarray, peak: float = 1.0) -> np.ndarray:
    return (y * (peak / max(float(np.max(np.abs(y))), _TINY))).astype(np.float32)


def gain_with_guard(y: np.ndarray, db: float) -> np.ndarray:
    """`gain`, then scaled back to full scale if it would clip (a recorder's limiter)."""
    louder = gain(y, db)
    return peak_normalised(louder) if np.max(np.abs(louder)) > 1.0 else louder


def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """Unit-power noise whose spectrum falls as 1/f^k: white k=0, pink k=1, brown k=2."""
    exponent = {"white": 0.0, "pink": 1.0, "brown": 2.0}[colour]
    spectrum = np.fft.rfft(rng.standard_normal(n))
    frequencies = np.fft.rfftfreq(n)
    frequencies[0] = frequencies[1] if n > 1 else 1.0
    noise = np.fft.irfft(spectrum / frequencies ** (exponent / 2.0), n)
    return noise / max(float(np.sqrt(np.mean(noise**2))), _TINY)


def mix_at_snr(y: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """`y` plus `noise` scaled so that the clip's mean power is `snr_db` above the noise's."""
    signal_power = float(np.mean(np.square(y, dtype=np.float64)))
    noise_power = max(float(np.mean(np.square(noise, dtype=np.float64))), _TINY)
    scale = np.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (y + scale * noise).astype(np.float32)


def add_noise(
    y: np.ndarray, snr_db: float, rng: np.random.Generator, colour: str = "white"
) -> np.ndarray:
    return mix_at_snr(y, coloured_noise(len(y), colour, rng), snr_db)


def babble(
    y: np.ndarray,
    others: Sequence[np.ndarray],
    snr_db: float,
    rng: np.random.Generator,
    talkers: int = 4,
) -> np.ndarray:
    """Other speakers talking underneath: `talkers` clips of `others`, each at equal power,
    looped or cut to the clip's length at a random offset."""
    noise = np.zeros(len(y), np.float64)
    for index in rng.choice(len(others), size=min(talkers, len(others)), replace=False):
        other = np.asarray(others[index], np.float64)
        if len(other) == 0:
            continue
        start = int(rng.integers(0, len(other)))
        looped = np.resize(np.roll(other, -start), len(y))
        noise += looped / max(float(np.sqrt(np.mean(looped**2))), _TINY)
    return mix_at_snr(y, noise, snr_db)


def band_limited(
    y: np.ndarray, low_hz: float, high_hz: float, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """A 4th-order Butterworth band-pass (zero phase), as a cheap microphone or line would."""
    from scipy.signal import butter, sosfiltfilt

    high_hz = min(high_hz, 0.99 * sample_rate / 2)
    sos = butter(4, [low_hz, high_hz], btype="bandpass", fs=sample_rate, output="sos")
    return sosfiltfilt(sos, y).astype(np.float32)


def mu_law(y: np.ndarray, bits: int = 8) -> np.ndarray:
    """G.711 µ-law companding to `bits` bits and back (the signal clipped to full scale first)."""
    mu = 2**bits - 1
    x = np.clip(y, -1.0, 1.0)
    encoded = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    quantised = np.round((encoded + 1) / 2 * mu) / mu * 2 - 1
    return (np.sign(quantised) * np.expm1(np.abs(quantised) * np.log1p(mu)) / mu).astype(np.float32)


def telephone(y: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A narrow-band call: 300-3400 Hz, 8 kHz, µ-law, back at `sample_rate`.

    Scaled to a telephone's level first (peak at -6 dBFS) so the codec's quantisation is what a
    call would add, then back to the clip's level."""
    import soxr

    peak = max(float(np.max(np.abs(y))), _TINY)
    x = band_limited(y / peak * 0.5, *TELEPHONE_BAND_HZ, sample_rate)
    narrow = mu_law(soxr.resample(x, sample_rate, TELEPHONE_RATE))
    return _same_length(soxr.resample(narrow, TELEPHONE_RATE, sample_rate) * (peak / 0.5), len(y))


def lossy(
    y: np.ndarray, codec: str, bitrate_kbps: int, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Encoded and decoded by libsndfile: "mp3" (LAME, constant bitrate) or "opus" (in Ogg).

    libsndfile takes a compression level in [0, 1], not a bitrate: the bitrate is mapped onto
    it for each codec's range (MP3 320 to 32 kbit/s at 16 kHz mono's 8 to 160; Opus 6 to 256).
    """
    import soundfile

    peak = max(float(np.max(np.abs(y))), 1.0)  # codecs clip above full scale
    if codec == "mp3":
        fmt, subtype, low, high = "MP3", "MPEG_LAYER_III", 8.0, 160.0
        extra = {"bitrate_mode": "CONSTANT"}
    elif codec == "opus":
        fmt, subtype, low, high = "OGG", "OPUS", 6.0, 256.0
        extra = {}
    else:
        raise ValueError(f"unknown codec {codec!r}; expected mp3 or opus")
    level = float(np.clip((high - bitrate_kbps) / (high - low), 0.0, 1.0))
    buffer = io.BytesIO()
    soundfile.write(
        buffer, y / peak, sample_rate, format=fmt, subtype=subtype, compression_level=level, **extra
    )
    buffer.seek(0)
    decoded, rate = soundfile.read(buffer, dtype="float32")
    if rate != sample_rate:  # Opus decodes at 48 kHz
        import soxr

        decoded = soxr.resample(decoded, rate, sample_rate)
    return _aligned(decoded * peak, y)


def room_impulse(
    rt60_s: float,
    rng: np.random.Generator,
    sample_rate: int = SAMPLE_RATE,
    direct_to_reverberant_db: float = DIRECT_TO_REVERBERANT_DB,
) -> np.ndarray:
    """A synthetic room: the direct path, then exponentially decaying noise reaching -60 dB at
    `rt60_s` (Schroeder's statistical model of a diffuse reverberant tail), the tail's energy
    `direct_to_reverberant_db` below the direct path's."""
    n = max(int(rt60_s * sample_rate), 2)
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * 10.0 ** (-3.0 * t / rt60_s)
    tail[: int(0.002 * sample_rate) + 1] = 0.0  # the first reflections arrive after a few ms
    tail *= np.sqrt(10.0 ** (-direct_to_reverberant_db / 10.0) / max(np.sum(tail**2), _TINY))
    tail[0] = 1.0
    return tail / np.sqrt(np.sum(tail**2))


def reverberant(
    y: np.ndarray, rt60_s: float, rng: np.random.Generator, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    from scipy.signal import fftconvolve

    return fftconvolve(y, room_impulse(rt60_s, rng, sample_rate))[: len(y)].astype(np.float32)


def random_channel(
    y: np.ndarray, rng: np.random.Generator, others: Sequence[np.ndarray] = ()
) -> np.ndarray:
    """One training copy: one channel of CHANNELS (babble needs `others`), at a random strength,
    then a random gain in GAIN_RANGE_DB (kept under full scale)."""
    choices = [c for c in CHANNELS if c != "babble" or len(others) >= 2]
    channel = choices[int(rng.integers(len(choices)))]
    snr = float(rng.uniform(*SNR_RANGE_DB))
    if channel == "noise":
        out = add_noise(y, snr, rng, NOISE_COLOURS[int(rng.integers(len(NOISE_COLOURS)))])
    elif channel == "babble":
        out = babble(y, others, snr, rng)
    elif channel == "telephone":
        out = telephone(y)
    elif channel == "band":
        out = band_limited(y, float(rng.uniform(50, 400)), float(rng.uniform(3000, 7500)))
    elif channel in ("mp3", "opus"):
        bitrate = int(MP3_BITRATES[int(rng.integers(len(MP3_BITRATES)))])
        out = lossy(y, channel, bitrate // (2 if channel == "opus" else 1))
    else:
        out = reverberant(y, float(rng.uniform(*RT60_RANGE_S)), rng)
    return gain_with_guard(out, float(rng.uniform(*GAIN_RANGE_DB)))


def _same_length(x: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, np.float32)
    out[: min(n, len(x))] = x[:n]
    return out


def _aligned(decoded: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """`decoded` cut to the reference's length, after the codec's delay when libsndfile left one
    in (LAME at low constant bitrates: up to ~0.1 s), found by cross-correlating whole signals."""
    from scipy.signal import correlate

    n = len(reference)
    if len(decoded) > n:
        lags = correlate(decoded, reference, mode="valid", method="fft")
        decoded = decoded[int(np.argmax(lags)) :]
    return _same_length(decoded, n)


def channel_copies(
    waveforms: Sequence[np.ndarray], groups: Sequence[str | None], count: int, seed: int
) -> list[list[np.ndarray]]:
    """`count` copies of every waveform through `random_channel`, drawn from one Generator copy
    after copy. Babble comes from other waveforms of the same group (a speaker): no voice
    crosses a speaker split, and the talker underneath says other things in other emotions."""
    rng = np.random.default_rng(seed)
    members: dict[str | None, list[int]] = {}
    for i, group in enumerate(groups):
        members.setdefault(group, []).append(i)
    copies = []
    for _ in range(count):
        copy = []
        for i, y in enumerate(waveforms):
            others = [waveforms[j] for j in members[groups[i]] if j != i]
            copy.append(random_channel(y, rng, others[:: max(1, len(others) // BABBLE_POOL)]))
        copies.append(copy)
    return copies
