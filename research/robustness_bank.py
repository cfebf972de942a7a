"""The robustness report's bank: encoder vectors and the shipped CNNs' outputs of every clip
under every condition (see research.robustness). The vectors are pooled "all+soft"
(ser_worker.models.encoder.pooling), whose first half is the "all" vector: one bank serves
recipes of either pooling."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ser_worker.features import channel

log = logging.getLogger("robustness")

Condition = Callable[[np.ndarray, np.random.Generator], np.ndarray]

# What the report measures under: the list. Gains and peak normalisation are the cases
# loudness normalisation must make exact; the rest change the signal itself.
CONDITIONS: dict[str, Condition] = {
    "clean": lambda y, rng: y,
    "gain-20dB": lambda y, rng: channel.gain(y, -20.0),
    "gain+10dB-guarded": lambda y, rng: channel.gain_with_guard(y, 10.0),
    "peak-normalised": lambda y, rng: channel.peak_normalised(y),
    "noise-20dB": lambda y, rng: channel.add_noise(y, 20.0, rng),
    "noise-15dB": lambda y, rng: channel.add_noise(y, 15.0, rng),
    "noise-10dB": lambda y, rng: channel.add_noise(y, 10.0, rng),
    "noise-5dB": lambda y, rng: channel.add_noise(y, 5.0, rng),
    "telephone": lambda y, rng: channel.telephone(y),
    "mp3-32k": lambda y, rng: channel.lossy(y, "mp3", 32),
    "reverb": lambda y, rng: channel.reverberant(y, 0.6, rng),
}
# The old preprocessing is measured under the conditions of the issue's own table.
RAW_CONDITIONS = ("clean", "gain-20dB", "peak-normalised", "noise-15dB", "telephone", "mp3-32k")
PREPROCESSINGS = ("raw", "level")


def bank_name(preprocessing: str, condition: str) -> str:
    return f"{preprocessing}--{condition}"


def planned(copies: int) -> list[tuple[str, str]]:
    """(preprocessing, condition) of every bank file; training copies are conditions copyK.
    What the recipes' clean comparison needs comes first."""
    plan = [("level", "clean")] + [("level", f"copy{k}") for k in range(copies)]
    plan += [("raw", c) for c in RAW_CONDITIONS]
    return plan + [("level", c) for c in CONDITIONS if c != "clean"]


def as_pooled(vectors: np.ndarray, pooling: str) -> np.ndarray:
    """The bank's "all+soft" vectors read as `pooling`: "all" is their first half."""
    from ser_worker.labels import POOL_ALL_SOFT

    return vectors if pooling == POOL_ALL_SOFT else vectors[:, : vectors.shape[1] // 2]


def clip_rng(path: Path, condition: str) -> np.random.Generator:
    """The same draws for a clip and condition in every run, whatever the clip order."""
    digest = hashlib.sha256(f"{path.name}:{condition}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def corpora(data: Path) -> tuple[list, list]:
    from ser_worker.datasets import load_dataset

    return load_dataset(data / "ravdess").clips, load_dataset(data / "tess").clips


def clips_by_speaker(clips) -> dict[str, list[int]]:
    by_speaker: dict[str, list[int]] = {}
    for i, clip in enumerate(clips):
        by_speaker.setdefault(clip.speaker, []).append(i)
    return by_speaker


def conditioned(i: int, condition: str, clips, decoded, by_speaker) -> np.ndarray:
    """Clip `i` (decoded[i]) under `condition`: one of CONDITIONS, or a training copy (copyK)
    through a random channel, drawn the same way in every run."""
    rng = clip_rng(clips[i].path, condition)
    if not condition.startswith("copy"):
        return CONDITIONS[condition](decoded[i], rng)
    # Babble for a training copy comes from the same speaker's other clips: no voice crosses a
    # speaker split, and the talker underneath says other things in other emotions.
    others = [decoded[j] for j in by_speaker[clips[i].speaker] if j != i]
    pool = others[:: max(1, len(others) // channel.BABBLE_POOL)]
    return channel.random_channel(decoded[i], rng, pool)


def make_bank(data: Path, out: Path, copies: int, only: list[str] | None = None) -> None:
    from ser_worker.audio import load_audio
    from ser_worker.bundle import load_bundle
    from ser_worker.bundle.archive import shipped_bundle_bytes
    from ser_worker.bundle.core import embed, predict_probabilities
    from ser_worker.bundle.manifest import CURRENT_PREPROCESSING, Preprocessing
    from ser_worker.bundle.preprocess import prepare_clip
    from ser_worker.features.study import extract
    from ser_worker.labels import POOL_ALL_SOFT, SAMPLE_RATE
    from ser_worker.models.encoder import LAYERS

    clips = [clip for corpus in corpora(data) for clip in corpus]
    started = time.perf_counter()
    decoded = [load_audio(clip.path, trim=False) for clip in clips]
    log.info("decoded %d clips in %.0f s", len(clips), time.perf_counter() - started)
    by_speaker = clips_by_speaker(clips)
    shipped = load_bundle(shipped_bundle_bytes())
    preprocessing = {"raw": Preprocessing(), "level": CURRENT_PREPROCESSING}
    out.mkdir(parents=True, exist_ok=True)
    for kind, condition in planned(copies):
        name = bank_name(kind, condition)
        if (only and name not in only) or (not only and (out / f"{name}.npz").exists()):
            continue
        started = time.perf_counter()
        vectors, cnn1d, cnn2d = [], [], []
        for start in range(0, len(clips), 64):
            batch = range(start, min(start + 64, len(clips)))
            prepared = []
            for i in batch:
                y = conditioned(i, condition, clips, decoded, by_speaker)
                prepared.append(prepare_clip(y, SAMPLE_RATE, preprocessing[kind]))
            # Pooled both ways from one encoder pass: the first half is what "all" reads.
            v = embed([p.encoder for p in prepared], LAYERS, POOL_ALL_SOFT)
            features = [extract(p.cnn, shipped.feature_settings) for p in prepared]
            p = predict_probabilities(
                shipped, features, encoder_vectors=as_pooled(v, shipped.encoder_pooling)
            )
            vectors.append(v.astype(np.float32))
            cnn1d.append(p["cnn1d"])
            cnn2d.append(p["cnn2d"])
        np.savez(
            out / f"{name}.npz",
            vectors=np.concatenate(vectors),
            cnn1d=np.concatenate(cnn1d),
            cnn2d=np.concatenate(cnn2d),
            paths=np.array([str(clip.path) for clip in clips]),
            layers=np.array(LAYERS),
            pooling=np.array(POOL_ALL_SOFT),
        )
        log.info("%s: %d clips in %.0f s", name, len(clips), time.perf_counter() - started)
