"""Does a denoiser in front of the speech encoder buy robustness to noise? (issue #14: white
noise at 15 dB SNR still costs the encoder about 0.04 of macro-F1 with channel copies and the
speech pooling.)

`embed`: each clip, as the encoder reads it (loudness-normalised), goes through a denoiser and
back to the same loudness, then through the encoder and the "all+soft" pooling, under the
conditions of research.speech_pooling (same seeded draws), training copies included: a head
learns from denoised clips, as a bundle with the denoiser in its preprocessing would.

`heads`: fits the encoder's head of the shipped recipe (clean clips + two channel copies) on
every run of the speaker-independent folds and across corpora, reading the plain bank (what
bundles read), the denoised bank, or both, and scores each under every condition:

- ``plain``: the shipped head, on the plain vectors;
- ``denoised``: one head on the denoised vectors only;
- ``average``: the mean of those two heads' probabilities;
- ``both``: one head on the plain and the denoised vector side by side;
- ``nap10``: the plain head with the 10 directions along which channel copies move a clip's
  standardised vector most (nuisance attribute projection) projected out.

    python -m research.speech_pooling embed --out .bank/pooling
    python -m research.denoise embed --denoiser spectral-gate --out .bank/denoise
    python -m research.denoise heads --plain .bank/pooling --denoised .bank/denoise \
        --seeds 0 1 2 3 4 --side test --out research/results/denoise_heads_test.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from research.common import DATA
from research.speech_pooling import READS, embed_bank, embed_parser
from ser_worker.labels import POOL_ALL_SOFT, SAMPLE_RATE

log = logging.getLogger("denoise")
TRAINING = ("clean", "copy0", "copy1")
TESTED = ("clean", "noise-20dB", "noise-15dB", "noise-5dB", "telephone", "reverb")
VARIANTS = ("plain", "denoised", "average", "both", "nap10")


def spectral_gate(y: np.ndarray) -> np.ndarray:
    """noisereduce's non-stationary spectral gating (its defaults: the noise floor of each
    frequency followed over time, gated fully)."""
    import noisereduce

    gated = noisereduce.reduce_noise(y=y, sr=SAMPLE_RATE, stationary=False, n_jobs=1)
    return gated.astype(np.float32)


DENOISERS = {"spectral-gate": spectral_gate}


def denoised(y: np.ndarray, denoiser: str) -> np.ndarray:
    """`y` (16 kHz, at the bundle's loudness) through `denoiser` and back to that loudness: a
    denoiser removes energy, and every member must read one loudness whatever it removed."""
    from ser_worker.bundle.manifest import CURRENT_PREPROCESSING
    from ser_worker.loudness import normalise_loudness

    target = CURRENT_PREPROCESSING.loudness.target_lufs
    return normalise_loudness(DENOISERS[denoiser](y), SAMPLE_RATE, target)


def projected_head(by_copy: list[np.ndarray], labels: list[str], directions: int):
    """A LinearHead fitted with the `directions` main directions of the copies' change from
    their clean clip (standardised) projected out; the projection is folded into the weights,
    so the head reads vectors as any LinearHead does."""
    from sklearn.linear_model import LogisticRegression

    from ser_worker.labels import EMOTIONS
    from ser_worker.models.encoder.head import HEAD_STRENGTH, LinearHead

    stacked = np.concatenate(by_copy)
    mean, scale = stacked.mean(axis=0), stacked.std(axis=0)
    scale[scale == 0] = 1.0
    z = [(x - mean) / scale for x in by_copy]
    change = np.concatenate([copy - z[0] for copy in z[1:]])
    _, _, vt = np.linalg.svd(change - change.mean(axis=0), full_matrices=False)
    u = vt[:directions].T
    zz = np.concatenate(z)
    model = LogisticRegression(C=HEAD_STRENGTH, max_iter=3000, class_weight="balanced")
    model.fit(zz - (zz @ u) @ u.T, [EMOTIONS.index(label) for label in labels])
    coef = model.coef_ - (model.coef_ @ u) @ u.T
    return LinearHead(
        tuple(EMOTIONS),
        mean.astype(np.float32),
        scale.astype(np.float32),
        coef.astype(np.float32),
        model.intercept_.astype(np.float32),
    )


def _run(banks: dict, labels: list[str], train: list[int], scored: list[int]) -> dict:
    """Macro-F1 of every variant under every condition, on one split."""
    from ser_worker.evaluation.metrics import argmax_macro_f1
    from ser_worker.labels import EMOTIONS
    from ser_worker.models.encoder import fit_linear_head

    y = [labels[i] for i in train] * len(TRAINING)
    truth = [labels[i] for i in scored]
    fitted = {
        name: fit_linear_head(np.concatenate([v[c][train] for c in TRAINING]), y, EMOTIONS)
        for name, v in banks.items()
    }
    nap = projected_head([banks["plain"][c][train] for c in TRAINING], y, 10)

    def probabilities(variant: str, c: str) -> np.ndarray:
        if variant == "average":
            return (probabilities("plain", c) + probabilities("denoised", c)) / 2
        if variant == "nap10":
            return nap.probabilities(banks["plain"][c][scored])
        return fitted[variant].probabilities(banks[variant][c][scored])

    return {v: {c: argmax_macro_f1(truth, probabilities(v, c)) for c in TESTED} for v in VARIANTS}


def heads(data: Path, plain_bank: Path, denoised_bank: Path, seeds: list[int], side: str) -> dict:
    from research.protocols import FOLDS, experiments
    from research.robustness_bank import corpora
    from research.robustness_run import TESS_EVERY

    def load(bank: Path) -> dict[str, np.ndarray]:
        return {
            c: np.hstack([np.load(bank / f"{c}.npz")[part] for part in READS[POOL_ALL_SOFT]])
            for c in (*TESTED, *TRAINING)
        }

    plain, noiseless = load(plain_bank), load(denoised_bank)
    banks = {
        "plain": plain,
        "denoised": noiseless,
        "both": {c: np.hstack([plain[c], noiseless[c]]) for c in plain},
    }
    ravdess, tess = corpora(data)
    protocols = [("speaker-ravdess-with-tess", seeds)]
    if side == "test":
        protocols.append(("cross-corpus", [0]))  # no validation speakers across corpora
    runs = []
    for protocol, protocol_seeds in protocols:
        for seed in protocol_seeds:
            for name, clips, split in experiments(protocol, ravdess, tess, FOLDS, seed, TESS_EVERY):
                scored = split.test if side == "test" else split.val
                f1 = _run(banks, [clip.emotion for clip in clips], list(split.train), list(scored))
                log.info(
                    "%s seed %d: 15 dB %s",
                    name,
                    seed,
                    {v: round(f1[v]["noise-15dB"], 3) for v in VARIANTS},
                )
                runs.append({"protocol": protocol, "experiment": name, "seed": seed, "f1": f1})
    return {"side": side, "conditions": list(TESTED), "variants": list(VARIANTS), "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    e = embed_parser(sub)
    e.add_argument("--denoiser", choices=list(DENOISERS), required=True)
    h = sub.add_parser("heads")
    h.add_argument("--data", type=Path, default=DATA)
    h.add_argument("--plain", type=Path, required=True)
    h.add_argument("--denoised", type=Path, required=True)
    h.add_argument("--seeds", type=int, nargs="*", default=[0])
    h.add_argument("--side", choices=("test", "val"), default="test")
    h.add_argument("--out", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command == "embed":
        embed_bank(args.data, args.out, args.conditions, lambda y: denoised(y, args.denoiser))
    else:
        results = heads(args.data, args.plain, args.denoised, args.seeds, args.side)
        text = json.dumps(results, indent=1)
        if args.out:
            args.out.write_text(text + "\n")
        else:
            print(text)


if __name__ == "__main__":
    main()
