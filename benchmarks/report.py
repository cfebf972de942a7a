"""The benchmark's verdict and its table: the targets each figure is held to, the summary keys
of `--json`, and the table printed from a run (or from a saved `--json` output with `--report`)."""

from __future__ import annotations

from typing import Any

TARGETS = {
    # key: (comparison, threshold, description)
    "features_speedup": (">=", 3.0, "features vs study, per core"),
    "features_match": ("==", True, "same outputs as the study"),
    "batch_inference_speedup": (">=", 10.0, "batched vs per-clip model.predict"),
    "encoder_speedup": (">=", 2.0, "speech encoder: default runtime vs CTranslate2"),
    "encoder_floor_fraction": (">=", 0.5, "speech encoder FLOPs/s / measured matmul rate"),
    "service_speedup_1_worker": (">=", 1.6, "1 worker vs 1 worker on the earlier path"),
    "service_efficiency_1_worker": (">=", 0.8, "1 worker vs in-process"),
    "scaling_2_workers": (">=", 1.8, "2 worker processes vs 1"),
    "scaling_2_hosts": (">=", 1.7, "2 worker hosts vs 1"),
    "worker_cold_start_s": ("<=", 5.0, "worker start to first result"),
    "worker_rss_mb": ("<=", 1000.0, "peak RSS per worker process"),
    "link_cut_lost": ("==", 0, "clips lost when a worker host's link is cut"),
    "link_cut_duplicated": ("==", 0, "clips done twice when a worker host's link is cut"),
    # Memory must not grow with the augmented copies: judged on the training data path, where the
    # copies are large enough to see; the whole train() runs' peaks (also reported) move by
    # +-150 MB with TensorFlow's allocator from run to run, more than small copies weigh.
    "training_data_growth_fraction": ("<", 0.25, "data path RAM growth / bytes of the copies"),
}


def summary_keys(r: dict) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "features" in r:
        out["features_speedup"] = r["features"]["speedup"]
        out["features_match"] = r["features"]["match"]
    if "inference" in r:
        both = r["inference"]["models"]["both"]
        out["batch_inference_speedup"] = both["speedup"]
        out["compute_floor_fraction"] = both["floor_fraction"]
        out["inference_clips_s"] = both["batched_clips_s"]
        if "encoder" in r["inference"]:
            out["encoder_speedup"] = r["inference"]["encoder"]["speedup"]
            out["encoder_floor_fraction"] = r["inference"]["encoder"]["floor_fraction"]
            out["encoder_clips_s"] = r["inference"]["encoder"]["clips_s"]
    if "service" in r:
        s = r["service"]
        out["service_efficiency_1_worker"] = s["efficiency_1_worker"]
        if "speedup_1_worker_vs_old_path" in s:
            out["service_speedup_1_worker"] = s["speedup_1_worker_vs_old_path"]
        out["scaling_2_workers"] = s["scaling_2_workers"]
        out["time_to_first_result_s"] = s["worker_1"]["first_result_s"]
        out["worker_cold_start_s"] = s["cold_1"]["spawn_to_first_result_s"]
        out["worker_rss_mb"] = max(
            max(m["children_mb"], default=float("nan")) for m in s["memory"].values()
        )
    if "training" in r:
        t = r["training"]
        out["training_seconds_per_epoch"] = t["copies_0"]["seconds_per_epoch"]
        out["training_peak_rss_mb"] = max(
            t["copies_0"]["peak_rss_mb"], t["copies_2"]["peak_rss_mb"]
        )
        out["training_memory_growth_mb"] = t["memory_growth_mb"]
        out["training_data_growth_fraction"] = t["data_anon_growth_mb"] / t["data_copies_mb"]
    return out


def targets(results: dict) -> dict[str, dict]:
    out = {}
    for key, (op, threshold, description) in TARGETS.items():
        value = results.get(key)
        if value is None:
            continue
        met = {
            ">=": lambda v, t: v >= t,
            "<": lambda v, t: v < t,
            "<=": lambda v, t: v <= t,
            "==": lambda v, t: v == t,
        }[op](value, threshold)
        out[key] = {
            "value": value,
            "target": f"{op} {threshold}",
            "met": bool(met),
            "what": description,
        }
    return out


def print_table(r: dict) -> None:
    meta = r["meta"]
    print(
        f"ser benchmark — {meta['cpus']} CPUs ({meta['cpu']}), {meta['clips']} clips from "
        f"{meta['data']}, median of {meta['repeats']} runs ({meta['service_repeats']} end to end)"
    )
    print(
        f"load average {meta['load_before']} before, {meta['load_after']} after; "
        f"bundle: {meta['bundle']}; {meta['duration_s']:.0f} s in all"
    )
    rows: list[tuple[str, str, str]] = []

    def row(what: str, value: str, note: str = "") -> None:
        rows.append((what, value, note))

    def mark(key: str) -> str:
        t = r["targets"].get(key)
        return "" if t is None else f"target {t['target']}: {'MET' if t['met'] else 'MISSED'}"

    f = r.get("features")
    if f:
        row(
            "1 features, clips/s per core: ours",
            f"{f['ours_clips_s']:.1f}",
            f"decode {f['ours_decode_ms']:.2f} ms/clip of it; cpu-time {f['ours_cpu_clips_s']:.1f}",
        )
        row(
            "  study's formulation",
            f"{f['study_clips_s']:.1f}",
            f"cpu-time {f['study_cpu_clips_s']:.1f}",
        )
        row("  speedup", f"{f['speedup']:.2f}x", mark("features_speedup"))
        row(
            "  same outputs",
            "yes" if f["match"] else "NO",
            f"max |dzcr| {f['max_zcr_abs']:.1g}, energy {f['max_energy_rel']:.1g} rel, "
            f"mel {f['max_mel_abs_db']:.1g} dB",
        )
    i = r.get("inference")
    if i:
        for name in ("cnn1d", "cnn2d", "both"):
            m = i["models"][name]
            row(
                f"2 inference {name}, clips/s batched",
                f"{m['batched_clips_s']:.1f}",
                f"per-clip predict {m['naive_clips_s']:.1f}: {m['speedup']:.1f}x; "
                f"{m['gflop_per_clip']:.3f} GFLOP/clip = {m['achieved_gflop_s']:.0f} GFLOP/s",
            )
        e = i.get("encoder")
        if e:
            row(
                f"2 speech encoder ({e['backend']}), clips/s",
                f"{e['clips_s']:.1f}",
                f"vectors of the untrimmed clips; loaded in {i['cold']['encoder_load_s']:.1f} s; "
                f"{e['gflop_per_clip']:.1f} GFLOP/clip = {e['achieved_gflop_s']:.0f} GFLOP/s",
            )
            row(
                f"  old path ({e['old_backend']}), same repeats",
                f"{e['old_clips_s']:.1f}",
                f"{e['old_gflop_per_clip']:.1f} GFLOP/clip (9 blocks per window, not 6)",
            )
            row("  encoder speedup", f"{e['speedup']:.2f}x", mark("encoder_speedup"))
            row(
                "  encoder floor fraction",
                f"{e['floor_fraction']:.2f}",
                f"int8 work against the f32 matmul rate; {mark('encoder_floor_fraction')}",
            )
        elif "encoder_clips_s" in i:
            row(
                "2 speech encoder, clips/s",
                f"{i['encoder_clips_s']:.1f}",
                f"vectors of the untrimmed clips; loaded in {i['cold']['encoder_load_s']:.1f} s",
            )
        mm = i["matmul_gflop_s"]
        row(
            "  matmul 2048^2 f32, GFLOP/s",
            f"{mm['floor']:.0f}",
            f"numpy {mm['numpy']:.0f}, tensorflow {mm['tensorflow']:.0f} ({i['threads']} threads)",
        )
        row(
            "  batched speedup (both)",
            f"{r['batch_inference_speedup']:.1f}x",
            mark("batch_inference_speedup"),
        )
        row(
            "  compute floor fraction (both)",
            f"{r['compute_floor_fraction']:.2f}",
            f"cnn2d {i['models']['cnn2d']['floor_fraction']:.2f}, "
            f"cnn1d {i['models']['cnn1d']['floor_fraction']:.2f}",
        )
    s = r.get("service")
    if s:
        row(
            "3 end to end, clips/s: in-process",
            f"{s['in_process']['clips_s']:.1f}",
            f"load_audio + predict, TF threads {s['tf_threads_per_process']}; "
            f"CPU {s['in_process']['cpu_ms_per_clip']:.1f} ms/clip",
        )
        for key, label in (("worker_1", "1 worker process"), ("workers_2", "2 worker processes")):
            w = s[key]
            row(
                f"  ser-cli submit --wait, {label}",
                f"{w['clips_s']:.1f}",
                f"first result {w['first_result_s']:.2f} s, last {w['last_result_s']:.2f} s, "
                f"wall {w['wall_s']:.2f} s",
            )
            row(
                "",
                "",
                f"  = {w['first_result_s']:.2f} s CLI start/upload/enqueue + first task, "
                f"{w['processing_s']:.2f} s workers, {w['tail_s']:.2f} s CLI poll/summary; "
                f"worker CPU {w['worker_cpu_ms_per_clip']:.1f} ms/clip, "
                f"{w['cores_busy']:.2f} cores busy",
            )
        if "old_path_worker_1" in s:
            w = s["old_path_worker_1"]
            row(
                "  1 worker process, earlier path",
                f"{w['clips_s']:.1f}",
                f"CTranslate2 encoder, Keras CNNs; worker CPU {w['worker_cpu_ms_per_clip']:.1f} "
                f"ms/clip, peak RSS {max(s['old_path_memory']['children_mb']):.0f} MB",
            )
            row(
                "  1 worker vs the earlier path",
                f"{r['service_speedup_1_worker']:.2f}x",
                mark("service_speedup_1_worker"),
            )
        row(
            "  service efficiency, 1 worker",
            f"{r['service_efficiency_1_worker']:.2f}",
            mark("service_efficiency_1_worker"),
        )
        row("  scaling, 2 workers / 1", f"{r['scaling_2_workers']:.2f}x", mark("scaling_2_workers"))
        row(
            "  the same, workers' part only",
            f"{s['efficiency_1_worker_processing']:.2f} / {s['scaling_2_workers_processing']:.2f}x",
            "first to last result, without the CLI's start, upload and polling",
        )
        row(
            "  CPU per clip, in-process / worker",
            f"{s['cpu_efficiency_1_worker']:.2f}",
            "the service's CPU overhead per clip, whatever else runs on the machine",
        )
        row(
            "  time to first result (1 worker)",
            f"{r['time_to_first_result_s']:.2f} s",
            "submit start to first clip stored",
        )
        c1 = s["cold_1"]
        row(
            "  worker cold start",
            f"{r['worker_cold_start_s']:.2f} s",
            f"spawn→ready {c1['spawn_to_ready_s']:.2f} s, first task {c1['first_task_s']:.2f} s; "
            + mark("worker_cold_start_s"),
        )
        row(
            "  2-process worker cold start",
            f"{s['cold_2']['spawn_to_first_result_s']:.2f} s",
            "both children warming up at once",
        )
        if i:
            cold = i["cold"]
            row(
                "  cold start parts (in process)",
                "",
                f"feature warm-up {cold['warm_up_s']:.2f} s, TF/Keras import "
                f"{cold['import_tf_s']:.2f} s, bundle load {cold['load_bundle_s']:.2f} s, "
                f"first predict {cold['first_predict_s']:.2f} s",
            )
    t = r.get("training")
    if t:
        zero, two = t["copies_0"], t["copies_2"]
        for name, secs in zero["seconds_per_epoch"].items():
            row(
                f"4 training {name}, s/epoch",
                f"{secs:.2f}",
                f"{zero['samples_per_epoch']} samples; "
                f"{t['seconds_per_1000_samples'][name]:.1f} s per 1000 samples",
            )
        row(
            "  peak RSS, 0 / 2 augmented copies",
            f"{zero['peak_rss_mb']:.0f} / {two['peak_rss_mb']:.0f} MB",
            f"anon {zero['peak_anon_mb']:.0f} / {two['peak_anon_mb']:.0f} MB; disk cache "
            f"{zero['cache_mb']:.0f} / {two['cache_mb']:.0f} MB; "
            + "TensorFlow's allocator moves these by up to ~150 MB run to run",
        )
    if s:
        # Keyed by worker concurrency; JSON turns the keys into strings.
        mem = {int(k): v for k, v in s["memory"].items()}
        row(
            "5 peak RSS per worker process",
            f"{r['worker_rss_mb']:.0f} MB",
            f"1-proc worker {max(mem[1]['children_mb']):.0f}, 2-proc "
            + "/".join(f"{m:.0f}" for m in mem[2]["children_mb"])
            + f", celery parent {mem[1]['parent_mb']:.0f}; "
            + mark("worker_rss_mb"),
        )
        row("  peak RSS, in-process baseline", f"{s['baseline_peak_rss_mb']:.0f} MB")
    if t:
        row(
            f"  data path RAM, 0 / {t['data_copies']} copies",
            f"+{t['data_anon_growth_mb']:.0f} MB",
            f"for +{t['data_copies_mb']:.0f} MB of augmented inputs (kept on disk); "
            + mark("training_data_growth_fraction"),
        )
        row(
            "  peak RSS per training job",
            f"{r['training_peak_rss_mb']:.0f} MB",
            f"{t['copies_2']['train_clips']} clips x 3, {t['copies_2']['epochs']} epochs",
        )
    width = max(len(a) for a, _, _ in rows)
    vwidth = max(len(b) for _, b, _ in rows)
    for what, value, note in rows:
        print(f"{what:<{width}}  {value:>{vwidth}}  {note}".rstrip())
    missed = [k for k, t in r["targets"].items() if not t["met"]]
    print("targets: " + ("all met" if not missed else "missed: " + ", ".join(missed)))
