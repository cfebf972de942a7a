"""Run the evaluation protocols of docs/RESULTS.md and render the report from their results.

    python -m research.report run --protocol random-ravdess --recipe ours --recipe study
    python -m research.report run --protocol speaker-ravdess --folds 0,1,2,3,4 --seeds 0,1,2
    python -m research.report render

How the published grid was made (docs/RESULTS.md, "Where and how the runs were made"):
random-ravdess, speaker-ravdess and speaker-ravdess-with-tess with `--bank .bank/bank.npz
--seeds 0,1,2,3,4 --epochs 40` on a GPU (research/gpu_grid.sh); speaker-tess (`--epochs 8`) and
cross-corpus (`--epochs 20`) with `--tess-every 2 --precision mixed_bfloat16` on 2 CPU cores.

Protocols (RAVDESS actors 01-20 and TESS, six classes, from --data or --bank):
  random-ravdess             the study's protocol: stratified clip-level split, same actors on
                             both sides
  speaker-ravdess            5 folds of 4 unseen actors (validation: other whole actors)
  speaker-ravdess-with-tess  the same folds, TESS's speakers added to the training side
  speaker-tess               trained on one TESS speaker, tested on the other (both directions)
  cross-corpus               trained on RAVDESS, tested on TESS, and the reverse
Recipes: `study` trains the two architectures plainly (no augmentation, no SpecAugment, centred
crops, no class weights); `ours` is the project's default training (TrainConfig()); `ours-cmn`
adds per-utterance mean normalisation of the log-mel.

Features come from the audio under --data, extracted and augmented per run, or from a bank
(research.feature_bank) whose clips and augmented copies were extracted once; a bank built
with --tess-every already holds only those TESS clips, so runs on it keep --tess-every 1.
Each run writes one JSON file under research/results/, so runs can be spread over machines and
sessions (KERAS_BACKEND=jax on a GPU runs the same code); `--shard K/N` and `--stop-after`
split a grid between processes; `render` rebuilds the tables from whatever results exist.
The protocols live in research.protocols, the runs in research.runs, the tables in
research.tables.
"""

import argparse
import logging
import sys
from pathlib import Path

if not __package__:  # run as a file: import research.* as `python -m research.report` would
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from research.common import DATA, RESULTS
from research.protocols import PROTOCOLS, RECIPES, REQUIRED_RECIPES
from research.runs import run
from research.tables import render
from ser_worker.labels import DEFAULT_EPOCHS
from ser_worker.training.config import PRECISIONS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(required=True)
    run_parser = sub.add_parser("run", help="train and evaluate; one JSON per run")
    run_parser.add_argument("--data", type=Path, default=DATA)
    run_parser.add_argument("--protocol", action="append", choices=PROTOCOLS, required=True)
    run_parser.add_argument("--recipe", action="append", choices=RECIPES)
    run_parser.add_argument("--folds", default="0,1,2,3,4")
    run_parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    run_parser.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1,2")
    run_parser.add_argument("--bank", type=Path, help="features from research.feature_bank")
    run_parser.add_argument(
        "--shard", default="0/1", help="K/N: run only every N-th planned run, from the K-th"
    )
    run_parser.add_argument(
        "--stop-after", type=int, default=0, help="start no run after this many seconds"
    )
    run_parser.add_argument("--tess-every", type=int, default=1)
    run_parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=PRECISIONS[0],
        help="training arithmetic (mixed_bfloat16: faster on CPUs with AMX/AVX512-BF16)",
    )
    run_parser.add_argument("--overwrite", action="store_true")
    run_parser.add_argument(
        "--results", type=Path, default=RESULTS, help="where the JSON of each run goes"
    )
    run_parser.set_defaults(func=run)
    render_parser = sub.add_parser("render", help="rebuild the tables of docs/RESULTS.md")
    render_parser.set_defaults(func=render)
    args = parser.parse_args()
    if getattr(args, "recipe", None) is None and args.func is run:
        args.recipe = list(REQUIRED_RECIPES)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.func(args)


if __name__ == "__main__":
    main()
