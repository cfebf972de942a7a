"""Does the encoder's vector follow the voice better when it pools only the frames that hold
speech? (issue #14: noise and corpus shift.)

A clip's vector is the mean and spread of the encoder's frames over the whole clip. RAVDESS
files hold about a second of room tone around the speech and TESS's almost none, and white noise
fills exactly those frames: so the pooled statistics carry the recording (its silence, its
noise floor) as well as the voice. This embeds every RAVDESS and TESS clip under a few
conditions (as `research.robustness embed` does, same seeded draws) and pools each clip's
frames three ways from the same encoder pass:

- ``all``: every frame (what bundles did before this study);
- ``speech``: frames where Silero's speech probability (as the timeline's detector computes it,
  on the clip as the encoder reads it) is above the timeline's threshold, widened by its pad;
  every frame when fewer than MIN_SPEECH_FRAMES are speech;
- ``soft``: every frame weighted by that probability;
- ``rest``: every frame weighted by the probability that it is *not* speech: what the recording
  sounds like around the voice (its room tone, its noise), which a linear head can read beside
  the voice's statistics to tell the two apart (noise-aware training, as in ASR).

*all+soft* is what bundles now pool (ser_worker.models.encoder.pooling, whose weights this
uses); this study is how it was chosen.

Then it fits the encoder's head (on clean clips and two channel copies of each, as the shipped
recipe, or `--copies`) per split of the speaker-independent folds and across corpora, and scores
each pooling (and ``all+soft``: both side by side) under each condition.

    python -m research.speech_pooling embed --out .bank/pooling
    python -m research.speech_pooling score --bank .bank/pooling \
        --out research/results/speech_pooling.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from research.common import DATA
from research.robustness_bank import clips_by_speaker, conditioned, corpora

log = logging.getLogger("pooling")
POOLINGS = ("all", "speech", "soft", "rest")
# What a head can read: one pooling, or several side by side.
READS = {
    **{name: (name,) for name in POOLINGS},
    "all+soft": ("all", "soft"),
    "all+soft+rest": ("all", "soft", "rest"),
    "soft+rest": ("soft", "rest"),
}
EMBEDDED = (
    "clean",
    "copy0",
    "copy1",
    "noise-20dB",
    "noise-15dB",
    "noise-5dB",
    "telephone",
    "reverb",
)
MIN_SPEECH_FRAMES = 10


def speech_weights(signal: np.ndarray, frames: int, threshold: float, pad_s: float):
    """(hard mask, soft weights, rest weights) over `frames` encoder frames of `signal` (16 kHz);
    the soft weights are the ones bundles pooling "all+soft" use (models.encoder.pooling), the
    rest weights their complement."""
    from ser_worker.models.encoder.pooling import SOFT_FLOOR
    from ser_worker.models.encoder.pooling import speech_weights as under_frames
    from ser_worker.segments import FRAME_S, frame_probabilities

    p = frame_probabilities(signal)
    if p.size == 0:
        return np.ones(frames, bool), np.ones(frames, np.float32), np.ones(frames, np.float32)
    speech = p > threshold
    widened = speech.copy()
    for shift in range(1, int(round(pad_s / FRAME_S)) + 1):
        widened[shift:] |= speech[:-shift]
        widened[:-shift] |= speech[shift:]
    hard = under_frames(widened.astype(np.float32), frames, FRAME_S) > SOFT_FLOOR
    return hard, under_frames(p, frames, FRAME_S), under_frames(1.0 - p, frames, FRAME_S)


def embed_bank(
    data: Path,
    out: Path,
    conditions: list[str],
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> None:
    """Every clip under every condition, pooled three ways. `transform`, when given, is applied
    to the clip as the encoder reads it (after the bundle's preprocessing), before the encoder
    and the speech detector see it (research.denoise)."""
    from ser_worker.audio import load_audio
    from ser_worker.bundle.manifest import CURRENT_PREPROCESSING
    from ser_worker.bundle.preprocess import prepare_clip
    from ser_worker.labels import SAMPLE_RATE
    from ser_worker.models.encoder import LAYERS, load_encoder, pool
    from ser_worker.segments import SegmentSettings

    vad = SegmentSettings.from_settings()
    clips = [clip for corpus in corpora(data) for clip in corpus]
    decoded = [load_audio(clip.path, trim=False) for clip in clips]
    by_speaker = clips_by_speaker(clips)
    encoder = load_encoder(tuple(LAYERS), 2)
    out.mkdir(parents=True, exist_ok=True)
    for condition in conditions:
        if (out / f"{condition}.npz").exists():
            continue
        started = time.perf_counter()
        vectors = {name: [] for name in POOLINGS}
        for start in range(0, len(clips), 64):
            batch = range(start, min(start + 64, len(clips)))
            waveforms = []
            for i in batch:
                y = conditioned(i, condition, clips, decoded, by_speaker)
                y = prepare_clip(y, SAMPLE_RATE, CURRENT_PREPROCESSING).encoder
                waveforms.append(transform(y) if transform else y)
            for y, blocks in zip(waveforms, encoder.frames(waveforms), strict=True):
                hard, soft, rest = speech_weights(y, len(blocks[0]), vad.threshold, vad.pad_s)
                if hard.sum() < MIN_SPEECH_FRAMES:
                    hard = np.ones_like(hard)
                ones = np.ones(len(blocks[0]), np.float32)
                for name, w in (
                    ("all", ones),
                    ("speech", hard.astype(np.float32)),
                    ("soft", soft),
                    ("rest", rest),
                ):
                    vectors[name].append(np.concatenate([pool(b, w) for b in blocks]))
        np.savez(
            out / f"{condition}.npz",
            paths=np.array([str(clip.path) for clip in clips]),
            **{name: np.stack(v) for name, v in vectors.items()},
        )
        log.info("%s: %d clips in %.0f s", condition, len(clips), time.perf_counter() - started)


def score(
    data: Path,
    bank: Path,
    seeds: list[int],
    adapt: bool,
    copies: int = 2,
    reads=tuple(READS),
    side: str = "test",
) -> dict:
    """Macro-F1 of each read under each condition, on each run's test actors or (`side`
    "val") its validation actors, where a choice may be made (no validation speakers across
    corpora)."""
    from research.protocols import FOLDS, experiments
    from research.robustness_run import TESS_EVERY
    from ser_worker.evaluation.metrics import argmax_macro_f1
    from ser_worker.labels import EMOTIONS
    from ser_worker.models.encoder import fit_adapted_head, fit_linear_head
    from ser_worker.models.encoder.head import HEAD_STRENGTH, standardised_by_group

    ravdess, tess = corpora(data)
    training = ["clean", *(f"copy{k}" for k in range(copies))]
    stored = {
        c: np.load(bank / f"{c}.npz")
        for c in (*EMBEDDED, *training)
        if (bank / f"{c}.npz").exists()
    }
    tested = [c for c in stored if not c.startswith("copy")]
    results: dict = {
        "conditions": tested,
        "adapt": adapt,
        "copies": copies,
        "side": side,
        "runs": [],
    }
    protocols = [("speaker-ravdess-with-tess", seeds)]
    if side == "test":
        protocols.append(("cross-corpus", [0]))
    for protocol, protocol_seeds in protocols:
        for seed in protocol_seeds:
            for name, clips, split in experiments(protocol, ravdess, tess, FOLDS, seed, TESS_EVERY):
                labels = [clip.emotion for clip in clips]
                train = list(split.train)
                test = list(split.test if side == "test" else split.val)
                row = {"protocol": protocol, "experiment": name, "seed": seed, "f1": {}}
                for pooling in reads:
                    parts = READS[pooling]
                    x = {c: np.hstack([stored[c][part] for part in parts]) for c in stored}
                    train_x = np.concatenate([x[c][train] for c in training])
                    train_y = [labels[i] for i in train] * len(training)
                    if adapt:
                        groups = [
                            f"{clips[i].corpus}:{k}" for k in range(len(training)) for i in train
                        ]
                        head = fit_adapted_head(
                            train_x, train_y, groups, EMOTIONS, strength=HEAD_STRENGTH
                        )
                    else:
                        head = fit_linear_head(train_x, train_y, EMOTIONS, strength=HEAD_STRENGTH)
                    truth = [labels[i] for i in test]
                    row["f1"][pooling] = {}
                    for c in tested:
                        v = x[c][test]
                        if adapt:
                            v = standardised_by_group(v, [f"{clips[i].corpus}:{c}" for i in test])
                        row["f1"][pooling][c] = argmax_macro_f1(truth, head.probabilities(v))
                log.info(
                    "%s seed %d: %s",
                    name,
                    seed,
                    {p: {c: round(f, 3) for c, f in row["f1"][p].items()} for p in reads},
                )
                results["runs"].append(row)
    summary = {}
    for protocol, _ in protocols:
        runs = [r for r in results["runs"] if r["protocol"] == protocol]
        summary[protocol] = {
            p: {
                c: [
                    float(np.mean([r["f1"][p][c] for r in runs])),
                    float(np.std([r["f1"][p][c] for r in runs])),
                ]
                if protocol != "cross-corpus"
                else {r["experiment"]: r["f1"][p][c] for r in runs}
                for c in tested
            }
            for p in reads
        }
    results["summary"] = summary
    return results


def embed_parser(sub) -> argparse.ArgumentParser:
    """The `embed` command and its arguments (research.denoise adds its own to them)."""
    e = sub.add_parser("embed")
    e.add_argument("--data", type=Path, default=DATA)
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--conditions", nargs="*", default=list(EMBEDDED))
    return e


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    embed_parser(sub)
    s = sub.add_parser("score")
    s.add_argument("--data", type=Path, default=DATA)
    s.add_argument("--bank", type=Path, required=True)
    s.add_argument("--seeds", type=int, nargs="*", default=[0])
    s.add_argument("--adapt", action="store_true")
    s.add_argument("--copies", type=int, default=2, help="training copies per clip (copy0...)")
    s.add_argument("--reads", nargs="*", default=list(READS), choices=list(READS))
    s.add_argument("--side", choices=("test", "val"), default="test")
    s.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command == "embed":
        embed_bank(args.data, args.out, args.conditions)
    else:
        results = score(
            args.data, args.bank, args.seeds, args.adapt, args.copies, args.reads, args.side
        )
        text = json.dumps(results, indent=1)
        print(json.dumps(results["summary"], indent=1))
        if args.out:
            args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
