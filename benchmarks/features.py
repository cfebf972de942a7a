"""Section 1, features per core: ``audio.load_audio`` + ``features.extract`` against the study's
formulation (benchmarks/study_features.py), on the same clips, with the outputs compared."""

from __future__ import annotations

import time

from benchmarks.harness import median
from benchmarks.memory import proc_status


def section_features(spec: dict) -> dict:
    from benchmarks.study_features import agreement, study_extract
    from ser_worker.audio import AudioError, load_audio
    from ser_worker.features.study import FeatureSettings, extract

    settings = FeatureSettings()
    clips, rejected = [], {}
    for path in spec["clips"]:
        try:
            load_audio(path)
            clips.append(path)
        except AudioError as error:
            rejected[path] = error.code
    # Warm-up: librosa's numba kernels compile on first use in both implementations.
    study_extract(clips[0], settings)
    extract(load_audio(clips[0]), settings)

    match = None
    for path in clips:
        a = agreement(study_extract(path, settings), extract(load_audio(path), settings))
        match = a if match is None else match.merge(a)

    def ours() -> tuple[float, float, float]:
        decode = 0.0
        wall, cpu = time.perf_counter(), time.process_time()
        for path in clips:
            t = time.perf_counter()
            y = load_audio(path)
            decode += time.perf_counter() - t
            extract(y, settings)
        return time.perf_counter() - wall, time.process_time() - cpu, decode

    def study() -> tuple[float, float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for path in clips:
            study_extract(path, settings)
        return time.perf_counter() - wall, time.process_time() - cpu, float("nan")

    runs: dict[str, list[tuple[float, float, float]]] = {"ours": [], "study": []}
    for r in range(spec["repeats"]):
        order = ["study", "ours"] if r % 2 == 0 else ["ours", "study"]
        for name in order:
            runs[name].append((ours if name == "ours" else study)())
    n = len(clips)
    return {
        "clips": n,
        "rejected": rejected,
        "ours_clips_s": median([n / w for w, _, _ in runs["ours"]]),
        "study_clips_s": median([n / w for w, _, _ in runs["study"]]),
        "ours_cpu_clips_s": median([n / c for _, c, _ in runs["ours"]]),
        "study_cpu_clips_s": median([n / c for _, c, _ in runs["study"]]),
        "ours_decode_ms": median([1e3 * d / n for _, _, d in runs["ours"]]),
        "speedup": median([s[0] / o[0] for s, o in zip(runs["study"], runs["ours"], strict=True)]),
        "speedup_cpu": median(
            [s[1] / o[1] for s, o in zip(runs["study"], runs["ours"], strict=True)]
        ),
        "match": bool(match.ok),
        "max_zcr_abs": match.zcr_max_abs,
        "max_energy_rel": match.energy_max_rel,
        "max_mel_abs_db": match.mel_max_abs_db,
        "peak_rss_mb": proc_status()["VmHWM"],
    }
