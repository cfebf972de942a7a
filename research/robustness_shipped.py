"""The shipped bundle itself under the report's conditions, through Bundle.predict: how often each
member's answer stays the clean clip's. Its training data are these clips, so this measures
stability, not accuracy (research.robustness)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from research.common import RESULTS
from research.robustness_bank import CONDITIONS, clip_rng, corpora

log = logging.getLogger("robustness")
OUT = RESULTS / "robustness" / "shipped_stability.json"


def shipped_stability(data: Path, every: int, bundle_path: Path | None = None) -> dict:
    from ser_worker.audio import load_audio
    from ser_worker.bundle import load_bundle
    from ser_worker.bundle.archive import shipped_bundle_bytes
    from ser_worker.labels import SAMPLE_RATE

    bundle = load_bundle(bundle_path or shipped_bundle_bytes())
    clips = [clip for corpus in corpora(data) for clip in corpus][::every]
    decoded = [load_audio(clip.path, trim=False) for clip in clips]
    labels: dict[str, dict[str, np.ndarray]] = {}
    for condition, change in CONDITIONS.items():
        started = time.perf_counter()
        signals = [
            change(y, clip_rng(clip.path, condition))
            for clip, y in zip(clips, decoded, strict=True)
        ]
        answers = bundle.predict(signals, SAMPLE_RATE)
        labels[condition] = {
            model: np.array([answer[model].emotion for answer in answers]) for model in answers[0]
        }
        log.info("%s: %d clips in %.0f s", condition, len(clips), time.perf_counter() - started)
    result = {
        "bundle": bundle.version,
        "clips": len(clips),
        "every": every,
        "unchanged": {
            condition: {
                model: float(np.mean(found == labels["clean"][model]))
                for model, found in by_model.items()
            }
            for condition, by_model in labels.items()
            if condition != "clean"
        },
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    return result


def stability_table(result: dict) -> str:
    models = list(next(iter(result["unchanged"].values())))
    lines = [
        f"**The shipped bundle ({result['bundle']}) itself**, through `Bundle.predict`, on "
        f"{result['clips']} clips (every {result['every']}th of RAVDESS and TESS, all in its "
        "training data: this is how often each answer stays the clean clip's, not accuracy):",
        "",
        "| condition | " + " | ".join(models) + " |",
        "|---|" + "---|" * len(models),
    ]
    for condition, by_model in result["unchanged"].items():
        lines.append(f"| {condition} | " + " | ".join(f"{by_model[m]:.1%}" for m in models) + " |")
    return "\n".join(lines)
