"""Train the default bundle shipped in the package on every clip of the data folder.

    python -m research.report run --protocol speaker-ravdess-with-tess ...  # first: the folds
    python -m research.encoder_report embed --out .bank/encoder.npz          # and the encoder's
    python -m research.encoder_report run --embeddings .bank/encoder.npz
    python -m research.default_model record    # the runs and weights the bundle takes
    python -m research.train_default_model --data ../shared/data

Trains both CNNs on every RAVDESS (actors 01-20) and TESS clip of the six classes with the
project's training recipe, fits the speech encoder's linear head on the same clips
(`--cnn-weights-from BUNDLE` keeps that bundle's CNNs and fits only the head) and writes:
  ser_worker/data/default_bundle.zip   the bundle `ser-cli` installs on first use
  docs/default_model.json              its training data, recipe, timings and training curves
  docs/default_model_history_*.png     the training curves

No clip is held out, so this run measures nothing about unseen speakers: that estimate comes
from the speaker-independent RAVDESS folds of docs/RESULTS.md, made with the same recipe on 14
of the 20 actors each. Which runs those are, the ensemble weights their validation actors
chose and how the bundle is trained are the typed record research/default_model_recipe.json
(research.default_model): the bundle records the folds' test figures as `expected_metrics`.
Training still watches a fixed subset of its own clips, scored in inference mode each epoch:
it restores the best epoch and lowers the learning rate when a BatchNormalization or optimiser
spike makes the served weights worse, but it cannot see overfitting, which is why the epoch
count is capped near the best epochs of the folds.

Seeds are fixed: the same command on the same data gives the same bundle up to the order of
floating-point summation.
"""

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as a file: import research.* as `python -m` would
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from research.common import DATA, REPO, speaker_set
from research.default_model import RECORD, DefaultModelRecipe, RecipeError
from ser_worker.audio import load_audio
from ser_worker.bundle import Bundle, load_bundle, read_manifest, save_bundle, with_encoder_head
from ser_worker.bundle.core import embed
from ser_worker.bundle.manifest import CURRENT_PREPROCESSING, Calibration
from ser_worker.bundle.preprocess import prepare_clip
from ser_worker.datasets import LabelledClip, Split, load_dataset
from ser_worker.evaluation.metrics import plot_history
from ser_worker.labels import CNN1D, CNN2D, MODEL_NAMES, SAMPLE_RATE
from ser_worker.models import encoder as speech_encoder
from ser_worker.training.config import PRECISIONS, TrainConfig
from ser_worker.training.experiment import fit_heads, train_and_evaluate

LICENCES = [
    "RAVDESS: Livingstone SR, Russo FA (2018), The Ryerson Audio-Visual Database of Emotional "
    "Speech and Song, PLoS ONE 13(5): e0196391. CC BY-NC-SA 4.0 (non-commercial).",
    "TESS: Dupuis K, Pichora-Fuller MK (2010), Toronto Emotional Speech Set, University of "
    "Toronto. CC BY-NC-ND 4.0 (non-commercial).",
]


def every_clip(clips: list[LabelledClip], monitor_every: int) -> Split:
    """All clips for training; every n-th of them again as the monitor set, nothing for test."""
    train = tuple(range(len(clips)))
    return Split(
        train=train,
        val=train[::monitor_every],
        test=(),
        protocol="all",
        description=(
            f"training: all {len(clips)} clips; validation: 1 in {monitor_every} of the training "
            "clips (a stability monitor, not a held-out set); test: none (see docs/RESULTS.md)"
        ),
        train_speakers=tuple(sorted({clip.speaker for clip in clips})),
    )


def main() -> None:
    recipe = DefaultModelRecipe.load()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument(
        "--out", type=Path, default=REPO / "ser_worker" / "data" / "default_bundle.zip"
    )
    parser.add_argument("--docs", type=Path, default=REPO / "docs")
    parser.add_argument(
        "--cnn-weights-from",
        type=Path,
        help="keep this bundle's CNNs (and their training record); fit only the encoder's heads",
    )
    parser.add_argument(
        "--retrain",
        type=lambda text: tuple(text.split(",")),
        default=(),
        help="with --cnn-weights-from: retrain these CNNs (e.g. cnn1d) on every clip as new "
        "bundles read them and keep the others",
    )
    parser.add_argument(
        "--hold-out",
        type=speaker_set,
        default=frozenset(),
        help="leave these speakers out (e.g. ravdess:15,ravdess:16): a fold bundle, for research "
        "that must classify unseen speakers with the shipped recipe; needs --out and --docs",
    )
    parser.add_argument("--epochs", type=int, default=recipe.epochs)
    parser.add_argument("--monitor-every", type=int, default=recipe.monitor_every)
    parser.add_argument("--precision", choices=PRECISIONS, default=recipe.precision)
    parser.add_argument("--seed", type=int, default=recipe.seed)
    args = parser.parse_args()
    if args.hold_out and (
        args.out == parser.get_default("out") or args.docs == parser.get_default("docs")
    ):
        parser.error("--hold-out writes a fold bundle: give it its own --out and --docs")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log = logging.getLogger("train_default_model")
    try:
        estimate = recipe.expected_metrics()
    except RecipeError as error:
        parser.error(f"{RECORD.relative_to(REPO)}: {error}")
    weights = recipe.ensemble_weights
    log.info(
        "ensemble weights from %d CNN runs and the encoder's: %s", len(recipe.cnn_runs), weights
    )

    started = time.perf_counter()
    clips = load_dataset(args.data / "ravdess").clips + load_dataset(args.data / "tess").clips
    clips = [clip for clip in clips if clip.speaker not in args.hold_out]
    if args.hold_out:
        log.info("held out: %s; training on %d clips", ",".join(sorted(args.hold_out)), len(clips))
    # Each member learns from the clips as the bundle's members will read them: no bundle
    # exists yet to ask, so the preprocessing every new bundle records.
    preprocessing = CURRENT_PREPROCESSING
    prepared = [
        prepare_clip(load_audio(clip.path, trim=False), SAMPLE_RATE, preprocessing)
        for clip in clips
    ]
    log.info("decoded %d clips in %.0f s", len(clips), time.perf_counter() - started)

    split = every_clip(clips, args.monitor_every)
    if args.cnn_weights_from:
        cnns = load_bundle(args.cnn_weights_from, runtime="keras")
        notes = (
            f"CNNs, their training record and feature settings from version {cnns.version} "
            "(--cnn-weights-from); encoder heads fitted on every clip by this script"
            + (f". That version's notes: {cnns.manifest.notes}" if cnns.manifest.notes else "")
        )
        if args.retrain:
            fresh = train_cnns(
                args, clips, [clip.cnn for clip in prepared], split, log, args.retrain
            )
            cnns = with_cnns_from(cnns, fresh)
            notes = (
                f"{', '.join(args.retrain)} retrained on every clip by this script, at the "
                f"loudness new bundles read; the other CNNs from version {cnns_version(args)} "
                "(level-invariant: decibels relative to each clip's maximum); encoder heads "
                "fitted on every clip by this script"
            )
    else:
        cnns = train_cnns(args, clips, [clip.cnn for clip in prepared], split, log)
        notes = ""
    started_head = time.perf_counter()
    untrimmed = [clip.encoder for clip in prepared]
    head, adapted = fit_heads(
        embed(untrimmed, recipe.encoder_layers, recipe.encoder_pooling),
        untrimmed,
        clips,
        preprocessing,
        copies=recipe.channel_copies,
        seed=recipe.seed,
        layers=recipe.encoder_layers,
        pooling=recipe.encoder_pooling,
        strength=recipe.head_strength,
    )
    log.info("encoder heads fitted in %.0f s", time.perf_counter() - started_head)
    if args.hold_out:
        held_out = ", ".join(sorted(args.hold_out))
        notes = f"fold bundle, not for shipping: {held_out} held out. {notes}"
    bundle = with_encoder_head(
        cnns,
        head,
        weights,
        encoder_layers=recipe.encoder_layers,
        encoder_pooling=recipe.encoder_pooling,
        split=split.to_dict(),
        adapted_head=adapted,
        calibration=Calibration(
            temperature=recipe.temperature, adapted_temperature=recipe.adapted_temperature
        ),
        training_data={
            "encoder": (
                f"{speech_encoder.ENCODER_NAME}, blocks {list(recipe.encoder_layers)} pooled "
                f"{recipe.encoder_pooling!r}; "
                f"linear head (C={recipe.head_strength}, balanced classes) on all {len(clips)} "
                f"clips, {'trimmed' if preprocessing.encoder.trim else 'untrimmed'}, and "
                f"{recipe.channel_copies} channel copies of each; an adapted head on the same "
                "vectors standardised per corpus and copy (per-submission adaptation)"
            ),
            "unseen_speaker_estimate": (
                f"docs/RESULTS.md, {recipe.protocol}, recipe {recipe.recipe} and the encoder's runs"
            ),
        },
        notes=notes,
    )
    bundle.manifest.expected_metrics = estimate
    save_bundle(bundle, args.out)
    seconds = time.perf_counter() - started

    args.docs.mkdir(parents=True, exist_ok=True)
    if not args.cnn_weights_from or args.retrain:
        for model, history in bundle.manifest.history.items():
            plot_history(
                history, args.docs / f"default_model_history_{model}.png", title=f"default {model}"
            )
    report = {
        "version": bundle.version,
        "split": split.to_dict(),
        "seconds": round(seconds),
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, CPU only",
        "training_data": bundle.manifest.training_data,
        "expected_metrics": bundle.manifest.expected_metrics,
        "ensemble_weights": weights,
        "notes": notes,
        "history": bundle.manifest.history,
    }
    (args.docs / "default_model.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("wrote %s (%s) in %.0f s", args.out, bundle.version, seconds)


def train_cnns(
    args: argparse.Namespace,
    clips: list,
    waveforms: list,
    split: Split,
    log,
    models: tuple[str, ...] = MODEL_NAMES,
):
    """The CNNs (both by default) on every clip, with the project's recipe."""
    config = TrainConfig(
        models=models, epochs=args.epochs, seed=args.seed, precision=args.precision
    )
    command = (
        f"python -m research.train_default_model --data DATA --epochs {args.epochs} "
        f"--monitor-every {args.monitor_every} --precision {args.precision} --seed {args.seed}"
        + (f" --cnn-weights-from BUNDLE --retrain {','.join(models)}" if args.retrain else "")
    )
    with tempfile.TemporaryDirectory(prefix="ser-default-") as cache_dir:
        bundle, _no_test_metrics = train_and_evaluate(
            waveforms,
            clips,
            split,
            config,
            cache_dir=Path(cache_dir),
            progress=log.info,
            training_data={
                "corpora": ["RAVDESS actors 01-20 (speech, six classes)", "TESS (six classes)"],
                "config": config.to_dict(),
                "command": command,
            },
            licences=LICENCES,
        )
    return bundle


def cnns_version(args: argparse.Namespace) -> str:
    return read_manifest(args.cnn_weights_from).version


def with_cnns_from(kept: Bundle, fresh: Bundle) -> Bundle:
    """`kept`'s CNNs with those of `fresh` in their place, and their training records.

    One normalizer serves both CNNs, but each reads its own part: cnn1d the zero-crossing and
    energy statistics, cnn2d the mel bands'. The retrained CNNs bring their part."""
    from ser_worker.bundle import create_bundle
    from ser_worker.features.study import Normalizer

    retrained = set(fresh.models)
    source = {
        CNN1D: fresh if CNN1D in retrained else kept,
        CNN2D: fresh if CNN2D in retrained else kept,
    }
    normalizer = Normalizer(
        zcr_mean=source[CNN1D].normalizer.zcr_mean,
        zcr_std=source[CNN1D].normalizer.zcr_std,
        energy_mean=source[CNN1D].normalizer.energy_mean,
        energy_std=source[CNN1D].normalizer.energy_std,
        mel_mean=source[CNN2D].normalizer.mel_mean,
        mel_std=source[CNN2D].normalizer.mel_std,
    )
    if fresh.feature_settings != kept.feature_settings:
        raise SystemExit("the retrained CNNs use other feature settings than the kept ones")
    manifest = kept.manifest
    return create_bundle(
        {name: source[name].models[name] for name in kept.models},
        feature_settings=kept.feature_settings,
        normalizer=normalizer,
        split=fresh.manifest.split,
        history=manifest.history | fresh.manifest.history,
        training_data=manifest.training_data
        | {f"{name}_retrained": fresh.manifest.training_data for name in retrained},
        licences=list(manifest.licences),
        ensemble_weights=None,
    )


if __name__ == "__main__":
    main()
