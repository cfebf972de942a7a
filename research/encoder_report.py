"""The pretrained speech encoder (ser_worker.models.encoder) under the report's protocols, alone
and mixed with the CNN runs of research/results on the same splits.

    python -m research.encoder_report embed --out .bank/encoder.npz  # every clip
    python -m research.encoder_report run --embeddings .bank/encoder.npz
    python -m research.encoder_report embed --layers 2,3,4,5,6 --out .bank/blocks.npz
    python -m research.encoder_report layers --embeddings .bank/blocks.npz

`layers` compares which encoder blocks to pool (ser_worker.models.encoder.LAYERS), by the
validation actors of speaker-ravdess-with-tess; test figures are printed beside them, not used
to choose.
`run` fits a linear head per split (seconds each, so every protocol runs with every seed on a
CPU), writes research/results/encoder/runs.json and fills the encoder section of docs/RESULTS.md.
Splits come from research.protocols, as the CNN runs', so each run pairs with the CNN run of
the same name and seed: the CNN ensemble there uses the CNN weights of the shipped bundle's
record (research.default_model), and the mix with the encoder takes the encoder's share chosen
on the validation actors.
TESS training sides hold every second clip, as the CNN runs' feature bank did.
"""

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np

if not __package__:  # run as a file: import research.* as `python -m` would
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from research.common import DATA, RESULTS, cell, fill_report, run_file
from research.default_model import DefaultModelRecipe
from research.protocols import FOLDS, experiments
from ser_worker.evaluation.ensemble import mix
from ser_worker.labels import EMOTIONS, ENCODER, ENSEMBLE, POOL_ALL
from ser_worker.models.encoder import LAYERS, check_layers, embedding_size

OUT = RESULTS / "encoder" / "runs.json"
SEEDS = (0, 1, 2, 3, 4)
PROTOCOLS = {
    "random-ravdess": SEEDS,
    "speaker-ravdess": SEEDS,
    "speaker-ravdess-with-tess": SEEDS,
    # A linear head on fixed embeddings is deterministic, and these splits do not depend on
    # the seed: one run each.
    "speaker-tess": (0,),
    "cross-corpus": (0,),
}
TESS_EVERY = 2  # see above
MARKER = "<!-- encoder-table -->"
log = logging.getLogger("encoder_report")


def corpora(data: Path) -> tuple[list, list]:
    from ser_worker.datasets import load_dataset

    return load_dataset(data / "ravdess").clips, load_dataset(data / "tess").clips


def embed(args: argparse.Namespace) -> None:
    from ser_worker.audio import load_audio
    from ser_worker.bundle.core import embed as embed_clips

    layers = check_layers(args.layers or LAYERS)

    clips = [clip for corpus in corpora(args.data) for clip in corpus]
    started = time.perf_counter()
    rows = []
    for start in range(0, len(clips), 32):
        batch = clips[start : start + 32]
        waveforms = [load_audio(clip.path, trim=args.trim) for clip in batch]
        # The block study pools every frame alike (block_columns reads that layout).
        rows.append(embed_clips(waveforms, layers, POOL_ALL))
        log.info(
            "%d/%d clips, %.3f s per clip",
            start + len(waveforms),
            len(clips),
            (time.perf_counter() - started) / (start + len(waveforms)),
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        args.out,
        embeddings=np.concatenate(rows),
        paths=np.array([str(c.path) for c in clips]),
        layers=np.array(layers),
    )


def stored_vectors(path: Path) -> tuple[np.ndarray, dict[str, int], tuple[int, ...]]:
    """(vectors, row of each clip path, the blocks they pool) of an `embed` output."""
    stored = np.load(path, allow_pickle=False)
    if "layers" not in stored:
        raise SystemExit(f"{path} does not say which encoder blocks it pools: embed again")
    layers = tuple(int(k) for k in stored["layers"])
    return stored["embeddings"], {p: i for i, p in enumerate(stored["paths"])}, layers


def block_columns(embedded: Sequence[int], chosen: Sequence[int]) -> np.ndarray:
    """The columns of vectors pooling the blocks `embedded` that hold the blocks `chosen`: a
    vector pooling only `chosen`, as the service's encoder lays it out (one block after the
    other, shallowest first)."""
    size = embedding_size((chosen[0],))
    return np.concatenate([np.arange(size) + list(embedded).index(k) * size for k in chosen])


LAYER_CANDIDATES = (
    (2,),
    (3,),
    (4,),
    (5,),
    (6,),
    (3, 5),
    (3, 6),
    (5, 6),
    (3, 4, 5),
    (2, 3, 4, 5, 6),
)
LAYER_PROTOCOL = "speaker-ravdess-with-tess"


def compare_layers(args: argparse.Namespace) -> None:
    """Each candidate set of blocks, its head fitted per run of LAYER_PROTOCOL (5 folds x 5
    seeds), scored on the validation and the test actors."""
    ravdess, tess = corpora(args.data)
    vectors, row_of, embedded = stored_vectors(args.embeddings)
    print(
        "| blocks pooled | validation macro-F1 | test macro-F1 | encoder + CNNs | blocks run |\n"
        "|---|---|---|---|---|"
    )
    for candidate in LAYER_CANDIDATES:
        if not set(candidate) <= set(embedded):
            continue
        columns = block_columns(embedded, candidate)
        rows = []
        for seed in PROTOCOLS[LAYER_PROTOCOL]:
            for name, clips, split in experiments(
                LAYER_PROTOCOL, ravdess, tess, FOLDS, seed, TESS_EVERY
            ):
                chosen = vectors[[row_of[str(clip.path)] for clip in clips]][:, columns]
                rows.append(one_run(LAYER_PROTOCOL, name, seed, clips, split, chosen))
        print(
            f"| {', '.join(map(str, candidate))} "
            f"| {cell([r['encoder_validation_macro_f1'] for r in rows])} "
            f"| {cell([r['encoder']['macro_f1'] for r in rows])} "
            f"| {cell([r['encoder_with_cnns'] for r in rows if 'encoder_with_cnns' in r])} "
            f"| {sum(candidate)} |",
            flush=True,
        )


def cnn_run(name: str, recipe: str, seed: int) -> dict | None:
    path = RESULTS / run_file(name, recipe, seed)
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    return result if "probabilities" in result else None


def cnn_ensemble(run: dict) -> dict[str, np.ndarray]:
    """A CNN run's ensemble outputs on its validation and test sides, with the shipped CNN
    weights."""
    weights = shipped_recipe().cnn_weights
    return {part: mix(run["probabilities"][part], weights) for part in ("val", "test")}


@cache
def shipped_recipe() -> DefaultModelRecipe:
    """The shipped bundle's record: its head strength and its CNNs' weights are the ones every
    run here fits and mixes with, so the encoder's rows describe what ships."""
    return DefaultModelRecipe.load()


def one_run(protocol: str, name: str, seed: int, clips: list, split, vectors: np.ndarray) -> dict:
    from ser_worker.evaluation.metrics import (
        argmax_macro_f1,
        choose_share,
        evaluate,
        mixed_macro_f1,
    )
    from ser_worker.models.encoder import fit_linear_head

    labels = [clip.emotion for clip in clips]
    side = {part: list(getattr(split, part)) for part in ("train", "val", "test")}
    recipe = shipped_recipe()
    head = fit_linear_head(
        vectors[side["train"]],
        [labels[i] for i in side["train"]],
        EMOTIONS,
        strength=recipe.head_strength,
    )
    p = {part: head.probabilities(vectors[side[part]]) for part in ("val", "test")}
    truth = {part: [labels[i] for i in side[part]] for part in ("val", "test")}
    encoder = evaluate(truth["test"], [EMOTIONS[i] for i in p["test"].argmax(axis=1)])
    row = {
        "experiment": name,
        "protocol": protocol,
        "seed": seed,
        "test_clips": len(side["test"]),
        ENCODER: {k: encoder[k] for k in ("accuracy", "macro_f1", "confusion")},
        "encoder_validation_macro_f1": (
            argmax_macro_f1(truth["val"], p["val"]) if truth["val"] else None
        ),
        # Rounded like the CNN runs' outputs, so ensembles can be studied without refitting.
        "probabilities": {
            part: {
                "labels": truth[part],
                ENCODER: np.round(p[part].astype(np.float64), 4).tolist(),
            }
            for part in ("val", "test")
        },
    }
    ours, study = cnn_run(name, "ours", seed), cnn_run(name, "study", seed)
    if study is not None:
        row["study_ensemble"] = study["metrics"][ENSEMBLE]["macro_f1"]
    if ours is not None and ours["probabilities"]["test"]["labels"] == truth["test"]:
        cnn = cnn_ensemble(ours)
        share = choose_share(truth["val"], p["val"], cnn["val"]) if truth["val"] else 0.5
        row["cnn_ensemble"] = argmax_macro_f1(truth["test"], cnn["test"])
        row["encoder_share"] = share
        row["encoder_with_cnns"] = mixed_macro_f1(truth["test"], p["test"], cnn["test"], share)
    return row


def run(args: argparse.Namespace) -> None:
    ravdess, tess = corpora(args.data)
    vectors_of_all, row_of, embedded = stored_vectors(args.embeddings)
    if embedded != LAYERS:
        raise SystemExit(f"{args.embeddings} pools blocks {embedded}, not the service's {LAYERS}")
    rows = []
    for protocol, seeds in PROTOCOLS.items():
        for seed in seeds:
            for name, clips, split in experiments(protocol, ravdess, tess, FOLDS, seed, TESS_EVERY):
                vectors = vectors_of_all[[row_of[str(clip.path)] for clip in clips]]
                rows.append(one_run(protocol, name, seed, clips, split, vectors))
                log.info(
                    "%s seed %d: %s",
                    name,
                    seed,
                    {k: v for k, v in rows[-1].items() if isinstance(v, float)},
                )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(rows, separators=(",", ":")) + "\n")
    fill_report({MARKER: encoder_table(rows)})
    print(encoder_table(rows))


def encoder_table(rows: list[dict]) -> str:
    from ser_worker.evaluation.metrics import most_confused

    lines = [
        "| protocol | runs | encoder: accuracy | encoder: macro-F1 | CNN ensemble (ours) | "
        "encoder + CNNs | encoder share chosen on validation | study recipe ensemble |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for protocol in PROTOCOLS:
        chosen = [row for row in rows if row["protocol"] == protocol]
        if not chosen:
            continue

        def values(key, sub=None, chosen=chosen):
            return [row[key][sub] if sub else row[key] for row in chosen if key in row]

        cells = [
            cell(values(ENCODER, "accuracy")),
            cell(values(ENCODER, "macro_f1")),
            cell(values("cnn_ensemble")),
            cell(values("encoder_with_cnns")),
            cell(values("encoder_share")),
            cell(values("study_ensemble")),
        ]
        lines.append(f"| {protocol} | {len(chosen)} | " + " | ".join(cells) + " |")
    lines += [
        "",
        *paired_lines(rows),
        "",
        "Most-confused pairs of the encoder alone, summed over "
        "each protocol's runs, by count (true → predicted, share of the true class):",
        "",
    ]
    for protocol in PROTOCOLS:
        matrices = [
            np.array(row[ENCODER]["confusion"]) for row in rows if row["protocol"] == protocol
        ]
        if matrices:
            pairs = most_confused(sum(matrices), EMOTIONS, top=3)
            shown = ", ".join(f"{p['true']}→{p['predicted']} {p['rate']:.0%}" for p in pairs)
            lines.append(f"- {protocol}: {shown}")
    return "\n".join(lines)


def paired_lines(rows: list[dict]) -> list[str]:
    """The issue's targets, paired run by run (same test actors, same seed)."""
    lines = []
    for protocol in ("speaker-ravdess", "speaker-ravdess-with-tess"):
        paired = [
            r
            for r in rows
            if r["protocol"] == protocol and "encoder_with_cnns" in r and "study_ensemble" in r
        ]
        if not paired:
            continue
        mix = statistics.mean(r["encoder_with_cnns"] for r in paired)
        study = statistics.mean(r["study_ensemble"] for r in paired)
        lines.append(
            f"- {protocol}, {len(paired)} paired runs: encoder + CNNs macro-F1 {mix:.3f} "
            f"(≥ 0.75: {'met' if mix >= 0.75 else 'not met'}), {(mix - study) * 100:+.1f} points "
            f"over the study recipe's ensemble on the same split ({study:.3f})."
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(required=True)
    embed_parser = sub.add_parser("embed", help="encoder vectors of every RAVDESS and TESS clip")
    embed_parser.add_argument("--out", type=Path, required=True)
    embed_parser.add_argument(
        "--trim",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="trim leading and trailing silence first, as the CNNs' features do",
    )
    embed_parser.add_argument(
        "--layers",
        type=lambda text: tuple(int(k) for k in text.split(",")),
        default=None,
        help="encoder blocks to pool, e.g. 2,3,4,5,6 (default: the service's)",
    )
    embed_parser.set_defaults(func=embed)
    layers_parser = sub.add_parser("layers", help="compare which encoder blocks to pool")
    layers_parser.add_argument("--embeddings", type=Path, required=True)
    layers_parser.set_defaults(func=compare_layers)
    run_parser = sub.add_parser("run", help="fit a head per split; fill the report section")
    run_parser.add_argument("--embeddings", type=Path, required=True)
    run_parser.set_defaults(func=run)
    for each in (embed_parser, run_parser, layers_parser):
        each.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.func(args)


if __name__ == "__main__":
    main()
