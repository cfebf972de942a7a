"""How well the timeline finds and classifies speech: recordings built from real labelled clips
(edge silence trimmed, joined with 0.5-2 s pauses over low background noise: white, 30 dB below
the recording's median clip by default), segmented as the
worker segments them (a chunk at a time), then each clip's segment classified by the shipped
bundle and compared with the same clip classified alone.

    python -m research.timeline_report --data ../shared/data --out research/results/timeline.json

Figures (docs/RESULTS.md, "Timelines"): the share of joined clips found as exactly one segment
that overlaps no other clip, the boundary error of those (against the voice's edges trimmed
broadband and above VOICE_BAND_HZ), and the ensemble's macro-F1 on the
segments against the clips alone.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.recordings import join_clips
from research.common import speaker_set
from ser_worker.labels import EMOTIONS, ENSEMBLE, SAMPLE_RATE
from ser_worker.service.recordings import CHUNK_S

CLIPS_PER_RECORDING = 20
CHUNK = int(CHUNK_S * SAMPLE_RATE)  # what the worker feeds the detector at a time
SPEECH_TOP_DB = 30.0
# The voice-band truth: the same trim on the clip high-passed here (zero phase). RAVDESS files
# hold rumble under 50 Hz before and after the sentence that reaches within 30 dB of the
# voice's peak in RMS; 80 Hz is below any adult voice's fundamental.
VOICE_BAND_HZ = 80.0


def pick_clips(root: Path, count: int, seed: int, speakers: frozenset[str] = frozenset()):
    """Up to `count` labelled clips (of `speakers` when given), as many of each emotion as there
    are, drawn at random; a class with fewer clips gives all it has."""
    from ser_worker.datasets import load_dataset

    rng = np.random.default_rng(seed)
    clips = [
        clip
        for clip in load_dataset(root).clips
        if clip.emotion in EMOTIONS and (not speakers or clip.speaker in speakers)
    ]
    per_class = count // len(EMOTIONS)
    chosen = []
    for emotion in EMOTIONS:
        pool = [clip for clip in clips if clip.emotion == emotion]
        chosen += [pool[i] for i in rng.choice(len(pool), min(per_class, len(pool)), replace=False)]
    return [chosen[i] for i in rng.permutation(len(chosen))]


def segment(signal: np.ndarray, settings) -> list:
    from ser_worker.segments import SpeechDetector

    detector = SpeechDetector(settings)
    for start in range(0, signal.size, CHUNK):
        detector.feed(signal[start : start + CHUNK])
    return detector.segments()


def match(joined, segments) -> list[dict]:
    """For each clip: the segments overlapping it, and whether it is found as one segment that
    overlaps no other clip."""
    out = []
    for clip in joined:
        hits = [s for s in segments if s.start_s < clip.end_s and s.end_s > clip.start_s]
        alone = len(hits) == 1 and all(
            not (hits[0].start_s < other.end_s and hits[0].end_s > other.start_s)
            for other in joined
            if other is not clip
        )
        out.append({"clip": clip, "hits": hits, "one_segment": alone})
    return out


def high_passed(y: np.ndarray, hz: float) -> np.ndarray:
    """`y` (SAMPLE_RATE) through a 4th-order Butterworth high-pass at `hz`, zero phase."""
    from scipy import signal

    return signal.sosfiltfilt(
        signal.butter(4, hz, "highpass", fs=SAMPLE_RATE, output="sos"), y
    ).astype(np.float32)


def speech_edges(joined, highpass_hz: float | None = None) -> dict[Path, tuple[float, float]]:
    """Where the voice is inside each clip: its edges trimmed at SPEECH_TOP_DB below the peak
    (the files keep room noise within 60 dB of the speech, which a detector rightly leaves out),
    measured on the clip high-passed at `highpass_hz` when given."""
    import librosa

    from ser_worker.audio import load_audio

    edges = {}
    for clip in joined:
        y = load_audio(clip.path, trim=True)
        if highpass_hz:
            y = high_passed(y, highpass_hz)
        _, (start, end) = librosa.effects.trim(y, top_db=SPEECH_TOP_DB)
        edges[clip.path] = (start / SAMPLE_RATE, (len(y) - end) / SAMPLE_RATE)
    return edges


def edge_errors(segment, clip, edges) -> list[float]:
    """Signed errors of a segment's start and end against the voice's edges (seconds; a
    positive start error: the segment starts late, a positive end error: it ends early)."""
    lead, tail = edges[clip.path]
    return [segment.start_s - (clip.start_s + lead), (clip.end_s - tail) - segment.end_s]


def error_summary(errors: list[float], prefix: str) -> dict:
    signed = np.asarray(errors)
    absolute = np.abs(signed)
    return {
        f"{prefix}_error_median_s": float(np.median(absolute)),
        f"{prefix}_error_p90_s": float(np.quantile(absolute, 0.9)),
        f"{prefix}_within_0.3s": float(np.mean(absolute <= 0.3)),
        # Which way the misses go: inside the voice (a late start, an early end) or outside it.
        f"{prefix}_inside_by_over_0.3s": float(np.mean(signed > 0.3)),
        f"{prefix}_outside_by_over_0.3s": float(np.mean(signed < -0.3)),
    }


def measure(recordings, settings, edges, band_edges) -> dict:
    found, errors, speech_errors, band_errors, seconds, audio_s = [], [], [], [], 0.0, 0.0
    for signal, joined in recordings:
        started = time.perf_counter()
        segments = segment(signal, settings)
        seconds += time.perf_counter() - started
        audio_s += signal.size / SAMPLE_RATE
        for m in match(joined, segments):
            found.append(m["one_segment"])
            if m["one_segment"]:
                s, c = m["hits"][0], m["clip"]
                errors += [abs(s.start_s - c.start_s), abs(s.end_s - c.end_s)]
                speech_errors += [abs(e) for e in edge_errors(s, c, edges)]
                band_errors += edge_errors(s, c, band_edges)
    errors, speech_errors = np.asarray(errors), np.asarray(speech_errors)
    return {
        "clips": len(found),
        "one_segment_share": float(np.mean(found)),
        "boundary_error_median_s": float(np.median(errors)),
        "boundary_error_p90_s": float(np.quantile(errors, 0.9)),
        "boundaries_within_0.3s": float(np.mean(errors <= 0.3)),
        "speech_boundary_error_median_s": float(np.median(speech_errors)),
        "speech_boundary_error_p90_s": float(np.quantile(speech_errors, 0.9)),
        "speech_boundaries_within_0.3s": float(np.mean(speech_errors <= 0.3)),
        **error_summary(band_errors, "voice_band_boundary"),
        # Starts and ends apart (edge_errors gives them in that order).
        **error_summary(band_errors[0::2], "voice_band_start"),
        **error_summary(band_errors[1::2], "voice_band_end"),
        "vad_seconds_per_audio_hour": seconds / audio_s * 3600,
    }


def read_spans_kept(recordings, settings) -> dict:
    """What the backward pass changes in what the models read: the share of the segments found
    without it whose read span is still read, and how many segments there are either way (a
    shout the forward pass hears too briefly only becomes one with it)."""
    kept, found_n, plain_n = [], 0, 0
    for signal, _ in recordings:
        found = [s.read_span for s in segment(signal, settings)]
        plain = [s.read_span for s in segment(signal, replace(settings, reach_back_s=0.0))]
        kept += [span in set(found) for span in plain]
        found_n, plain_n = found_n + len(found), plain_n + len(plain)
    return {
        "read_spans_kept": float(np.mean(kept)),
        "segments": found_n,
        "segments_without": plain_n,
    }


def classify(recordings, settings, bundle) -> dict:
    """Macro-F1 of the ensemble (and of each member, under "by_model") on each clip's
    longest-overlapping segment (a clip without one counts as wrong), on the same audio cut at
    the clip's true edges, and on the clips classified alone as the service would (untrimmed
    decode)."""
    from sklearn.metrics import f1_score

    from ser_worker.audio import load_audio

    models = [*bundle.members, ENSEMBLE]
    truth: list[str] = []
    answers = {way: {m: [] for m in models} for way in ("alone", "cut", "segments")}

    def add(way: str, predictions, where=None, n=0) -> None:
        for model in models:
            labels = [p[model].emotion for p in predictions]
            if where is not None:  # clips without a segment: "none", always wrong
                filled = ["none"] * n
                for i, label in zip(where, labels, strict=True):
                    filled[i] = label
                labels = filled
            answers[way][model] += labels

    for signal, joined in recordings:
        matches = match(joined, segment(signal, settings))
        clips = [
            bundle.prepare(load_audio(m["clip"].path, trim=False), SAMPLE_RATE) for m in matches
        ]
        add("alone", bundle.predict_prepared(clips))
        # The clip as it lies in the recording (same noise), cut at its true edges.
        exact = [
            bundle.prepare(
                signal[int(m["clip"].start_s * SAMPLE_RATE) : int(m["clip"].end_s * SAMPLE_RATE)],
                SAMPLE_RATE,
            )
            for m in matches
        ]
        add("cut", bundle.predict_prepared(exact))
        pieces, where = [], []
        for i, m in enumerate(matches):
            truth.append(m["clip"].emotion)
            if m["hits"]:
                c = m["clip"]
                s = max(m["hits"], key=lambda s: min(s.end_s, c.end_s) - max(s.start_s, c.start_s))
                start_s, end_s = s.read_span  # what a worker reads for it
                y = signal[int(start_s * SAMPLE_RATE) : int(end_s * SAMPLE_RATE)]
                pieces.append(bundle.prepare(y, SAMPLE_RATE))
                where.append(i)
        add("segments", bundle.predict_prepared(pieces), where, len(matches))

    def score(predicted: list[str]) -> float:
        return float(f1_score(truth, predicted, labels=list(EMOTIONS), average="macro"))

    return {
        "ensemble_macro_f1_alone": score(answers["alone"][ENSEMBLE]),
        "ensemble_macro_f1_cut_at_true_edges": score(answers["cut"][ENSEMBLE]),
        "ensemble_macro_f1_segments": score(answers["segments"][ENSEMBLE]),
        "by_model": {
            model: {way: score(answers[way][model]) for way in answers} for model in models
        },
    }


def pause_rule(settings, rule: str):
    """`settings` with the pause rules of "MIN_SILENCE/FRAGMENT/FRAGMENT_PAUSE" (seconds)."""
    min_silence, fragment, fragment_pause = (float(x) for x in rule.split("/"))
    return replace(
        settings, min_silence_s=min_silence, fragment_s=fragment, fragment_pause_s=fragment_pause
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--clips", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--thresholds", type=float, nargs="*", default=[0.25, 0.35, 0.5])
    parser.add_argument("--pads", type=float, nargs="*", default=[0.1, 0.2])
    parser.add_argument("--pad", type=float, help="the classified segments' pad (default: as set)")
    parser.add_argument(
        "--pause-rules",
        nargs="*",
        default=[],
        metavar="MIN_SILENCE/FRAGMENT/FRAGMENT_PAUSE",
        help="also segment with each of these SER_VAD_MIN_SILENCE_S / SER_VAD_FRAGMENT_S / "
        "SER_VAD_FRAGMENT_PAUSE_S (e.g. 0.3/0/0: no fragment rule), default threshold and pad",
    )
    parser.add_argument(
        "--reach-backs",
        type=float,
        nargs="*",
        default=[],
        metavar="SECONDS",
        help="also segment with each of these SER_VAD_REACH_BACK_S (0: no backward pass), "
        "default threshold, pad and pause rules",
    )
    parser.add_argument(
        "--context",
        type=float,
        nargs="*",
        help="classify with each of these SER_SEGMENT_CONTEXT_S values (default: as set)",
    )
    parser.add_argument(
        "--snr",
        type=float,
        default=30.0,
        help="background noise this many dB below the recording's median clip (mean power)",
    )
    parser.add_argument(
        "--noise-rms",
        type=float,
        help="background noise at this fixed RMS instead (the figures before 2026-12-07: 0.002)",
    )
    parser.add_argument("--segmentation-only", action="store_true")
    parser.add_argument(
        "--bundle",
        type=Path,
        help="classify with this bundle (default: the shipped one, trained on every clip)",
    )
    parser.add_argument(
        "--speakers",
        type=speaker_set,
        default=frozenset(),
        help="draw clips from these speakers only (e.g. those a --bundle held out)",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from ser_worker.bundle import load_bundle
    from ser_worker.bundle.archive import shipped_bundle_bytes
    from ser_worker.segments import SegmentSettings
    from ser_worker.service.recordings import flac_bytes

    clips = pick_clips(args.data, args.clips, args.seed, args.speakers)
    noise = {"noise_rms": args.noise_rms} if args.noise_rms is not None else {"snr_db": args.snr}
    recordings = [
        join_clips(
            [c.path for c in clips[i : i + CLIPS_PER_RECORDING]],
            [c.emotion for c in clips[i : i + CLIPS_PER_RECORDING]],
            seed=args.seed + i,
            **noise,
        )
        for i in range(0, len(clips), CLIPS_PER_RECORDING)
    ]
    snrs = np.array([clip.snr_db for _, joined in recordings for clip in joined])
    audio_s = sum(signal.size for signal, _ in recordings) / SAMPLE_RATE
    flac = sum(len(flac_bytes(signal)) for signal, _ in recordings)
    base = SegmentSettings.from_settings()
    if args.pad is not None:
        base = replace(base, pad_s=args.pad)
    every_clip = [clip for _, joined in recordings for clip in joined]
    edges = speech_edges(every_clip)
    band_edges = speech_edges(every_clip, VOICE_BAND_HZ)
    report = {
        "clips": len(clips),
        "recordings": len(recordings),
        "audio_s": audio_s,
        "flac_mb_per_hour": flac / audio_s * 3600 / 1e6,
        "noise": noise,
        "clip_snr_db_quantiles": dict(
            zip(
                ("p5", "p25", "p50", "p75", "p95"),
                np.quantile(snrs, [0.05, 0.25, 0.5, 0.75, 0.95]).round(1).tolist(),
                strict=True,
            )
        ),
        "settings": base.__dict__,
        "by_threshold_and_pad": {
            f"{t}/{pad}": measure(
                recordings, replace(base, threshold=t, pad_s=pad), edges, band_edges
            )
            for t in args.thresholds
            for pad in args.pads
        },
        "by_pause_rule": {
            rule: measure(recordings, pause_rule(base, rule), edges, band_edges)
            for rule in args.pause_rules
        },
        "by_reach_back": {
            str(seconds): {
                **measure(recordings, replace(base, reach_back_s=seconds), edges, band_edges),
                **read_spans_kept(recordings, replace(base, reach_back_s=seconds)),
            }
            for seconds in args.reach_backs
        },
    }
    if not args.segmentation_only:
        bundle = load_bundle(args.bundle or shipped_bundle_bytes())
        report["bundle"] = {"version": bundle.version, "notes": bundle.manifest.notes}
        report["speakers"] = sorted(args.speakers)
        contexts = args.context if args.context is not None else [base.context_s]
        by_context = {c: classify(recordings, replace(base, context_s=c), bundle) for c in contexts}
        report.update(by_context[contexts[-1]])
        report["by_context"] = by_context
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
