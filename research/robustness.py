"""How much the recording decides the emotion (issue #14): every member under changed levels,
noise, telephone, codecs and rooms, on the speaker-independent folds and across corpora.

    python -m research.robustness embed --out .bank/robust     # every clip, every condition
    python -m research.robustness run --bank .bank/robust      # heads per split; RESULTS.md
    python -m research.robustness shipped                      # the shipped bundle's stability
    python -m research.robustness heldout --bundle FOLD.zip    # a fold bundle on unseen actors
    python -m research.robustness heldout-figure RUN.json ... --out PNG

`embed` decodes every RAVDESS and TESS clip once, applies each condition of CONDITIONS (seeded
by the clip), prepares it as a bundle's members read it (research.robustness_bank), and stores
the speech encoder's vectors and the shipped bundle's CNN outputs per condition, under two
preprocessings: `raw` (as decoded: the shipped bundle and everything before #14) and `level`
(BS.1770 loudness normalisation: what new bundles record), plus `copies` training copies drawn
by ser_worker.features.channel.random_channel. `run` fits the encoder's head per split of each
protocol for each recipe of RECIPES and scores it under every condition (research.robustness_run).
"""

import argparse
import logging
import sys
from pathlib import Path

if not __package__:  # run as a file: import research.* as `python -m` would
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from research.common import DATA, speaker_set


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(required=True)
    embed_parser = sub.add_parser("embed", help="vectors of every clip under every condition")
    embed_parser.add_argument("--out", type=Path, required=True)
    embed_parser.add_argument("--copies", type=int, default=2)
    embed_parser.add_argument("--data", type=Path, default=DATA)
    embed_parser.add_argument(
        "--only", default=None, help="comma-separated bank names to (re)make, e.g. level--clean"
    )
    run_parser = sub.add_parser("run", help="heads per split; fill the RESULTS.md section")
    run_parser.add_argument("--bank", type=Path, required=True)
    run_parser.add_argument("--data", type=Path, default=DATA)
    run_parser.add_argument("--no-report", action="store_true", help="print, do not write")
    run_parser.add_argument(
        "--clean-only", action="store_true", help="the clean condition alone (a quick look)"
    )
    run_parser.add_argument(
        "--recipe",
        action="append",
        help="run only this recipe (repeatable); the others' rows are read from their files",
    )
    shipped_parser = sub.add_parser(
        "shipped", help="the shipped bundle's answers under every condition (stability)"
    )
    shipped_parser.add_argument("--data", type=Path, default=DATA)
    shipped_parser.add_argument("--every", type=int, default=8, help="every n-th clip")
    shipped_parser.add_argument("--bundle", type=Path, default=None)
    heldout_parser = sub.add_parser(
        "heldout", help="a fold bundle on its held-out actors under every condition (accuracy)"
    )
    heldout_parser.add_argument("--data", type=Path, default=DATA)
    heldout_parser.add_argument("--bundle", type=Path, required=True)
    heldout_parser.add_argument(
        "--group",
        action="append",
        required=True,
        help="NAME=SPEAKERS, e.g. validation=ravdess:15,ravdess:16,ravdess:17 (repeatable)",
    )
    heldout_parser.add_argument(
        "--save-probabilities", type=Path, help="also write every member's probabilities (.npz)"
    )
    figure_parser = sub.add_parser(
        "heldout-figure", help="plot `heldout` results of one or more fold bundles"
    )
    figure_parser.add_argument("runs", type=Path, nargs="+", help="heldout--VERSION.json files")
    figure_parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if hasattr(args, "runs"):
        import json

        from research.robustness_shipped import heldout_figure

        print(heldout_figure([json.loads(path.read_text()) for path in args.runs], args.out))
    elif hasattr(args, "group"):
        from research.robustness_shipped import heldout_robustness, heldout_table

        groups = {}
        for text in args.group:
            name, _, speakers = text.partition("=")
            groups[name] = speaker_set(speakers)
        result = heldout_robustness(args.data, args.bundle, groups, args.save_probabilities)
        print(heldout_table(result))
    elif hasattr(args, "every"):
        from research.robustness_shipped import shipped_stability, stability_table

        print(stability_table(shipped_stability(args.data, args.every, args.bundle)))
    elif hasattr(args, "copies"):
        from research.robustness_bank import make_bank

        make_bank(args.data, args.out, args.copies, args.only.split(",") if args.only else None)
    else:
        from research.robustness_run import run

        run(
            args.data,
            args.bank,
            write=not args.no_report,
            clean_only=args.clean_only,
            recipes=args.recipe,
        )


if __name__ == "__main__":
    main()
