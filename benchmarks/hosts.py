"""Hosts, not just processes: the service over a real network between worker hosts (Linux
network namespaces, benchmarks/netns.py), the CLI submitting from the root namespace.

Measured: throughput with 1 and with 2 worker hosts (two worker sets side by side on two Redis
databases, alternating run by run); a worker's cold start, RSS and CPU per clip; and a link cut:
while both hosts work through a submission, h2's interface goes down (``ip link set eth0
down``) while it holds a task; the task comes back after the visibility timeout and h1 finishes
it. Every clip must end done exactly once: lost = clips not done, duplicated = clips recorded
done by more than one task (counted from the tasks' results, after h2's link is back up).
"""

from __future__ import annotations

import ast
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import Worker, median
from benchmarks.memory import child_pids, cpu_seconds
from benchmarks.netns import DB_CUT, DB_ONE, DB_TWO, Hosts, unavailable

__all__ = ["measure", "print_rows", "run_hosts", "summary_keys", "unavailable"]

_RESULT = re.compile(r"Task ser\.infer\[[0-9a-f-]+\] succeeded in [0-9.]+s: (\{.*\})")


def task_results(workers: Sequence[Worker]) -> list[dict[str, int]]:
    """The counts each succeeded ser.infer task returned, from the workers' logs."""
    return [
        ast.literal_eval(match) for worker in workers for match in _RESULT.findall(worker.output())
    ]


# --- the measurements ---------------------------------------------------------------------------


def measure(
    workdir: Path,
    bundle: bytes,
    clips: Sequence[Path],
    *,
    repeats: int = 2,
    batch: int = 8,
    cut_batch: int = 4,
    visibility_timeout_s: float = 6,
    say=print,
) -> dict[str, Any]:
    """Throughput with 1 and 2 worker hosts, cold start and RSS, then the link cut."""
    n = len(clips)
    out: dict[str, Any] = {"clips": n, "batch": batch, "repeats": repeats}
    with Hosts(workdir) as hosts:
        hosts.register(bundle)
        batch_env = {"SER_BATCH_SIZE": str(batch)}
        # Cold start: a clip queued first, then the worker spawned; to that clip's result.
        queued = hosts.submit(clips[:1], DB_ONE, wait=False, **batch_env)["summary"]["submission"]
        one = hosts.worker("h1", DB_ONE, **batch_env)
        ready_s = one.wait_ready()
        first = max(at for _, at in hosts.wait_done(queued, 300) if at)
        out["cold_start"] = {
            "spawn_to_ready_s": ready_s,
            "spawn_to_first_result_s": first - one.spawned,
        }
        two = [hosts.worker(host, DB_TWO, **batch_env) for host in ("h1", "h2")]
        for worker in two:
            worker.wait_ready()
        say("hosts: warm-up of both worker sets")
        for db in (DB_ONE, DB_TWO):
            hosts.submit(clips[: 2 * batch], db, wait=True, **batch_env)
        runs: dict[str, list[dict]] = {"1_host": [], "2_hosts": []}
        for r in range(repeats):
            for name in ("1_host", "2_hosts") if r % 2 == 0 else ("2_hosts", "1_host"):
                say(f"hosts: run {r + 1}/{repeats}, {name}")
                working = [one] if name == "1_host" else two
                kids = [kid for w in working for kid in child_pids(w.process.pid)]
                cpu = cpu_seconds(kids)
                sub = hosts.submit(
                    clips, DB_ONE if name == "1_host" else DB_TWO, wait=True, **batch_env
                )
                items = hosts.items(sub["summary"]["submission"])
                if sum(status == "done" for status, _ in items) != n:
                    raise RuntimeError(f"not every clip was processed: {sub['summary']['status']}")
                cpu = cpu_seconds(kids) - cpu
                times = [at for _, at in items if at]
                runs[name].append(
                    {
                        "wall": sub["wall"],
                        "processing": max(times) - min(times),
                        "first": min(times) - sub["started"],
                        "cpu": cpu,
                    }
                )
        memory = [w.memory() for w in (one, *two)]
        out["worker_rss_mb"] = max(max(m["children_mb"], default=float("nan")) for m in memory)
        for name, label in (("1_host", "host_1"), ("2_hosts", "hosts_2")):
            out[label] = {
                "clips_s": median([n / run["wall"] for run in runs[name]]),
                "wall_s": median([run["wall"] for run in runs[name]]),
                "processing_s": median([run["processing"] for run in runs[name]]),
                # CPU of the worker processes per clip: the per-core rate, whatever else runs.
                "worker_cpu_ms_per_clip": median([1e3 * run["cpu"] / n for run in runs[name]]),
            }
        out["scaling_2_hosts"] = median(
            [a["wall"] / b["wall"] for a, b in zip(runs["1_host"], runs["2_hosts"], strict=True)]
        )
        out["scaling_2_hosts_processing"] = median(
            [
                a["processing"] / b["processing"]
                for a, b in zip(runs["1_host"], runs["2_hosts"], strict=True)
            ]
        )
        # Both hosts took work (warm-up included): the second host is not idle capacity.
        out["hosts_2"]["tasks_per_host"] = [w.tasks_succeeded("ser.infer") for w in two]
        for worker in (one, *two):
            worker.stop()
        out["link_cut"] = link_cut(hosts, clips, cut_batch, visibility_timeout_s, say)
    return out


def link_cut(
    hosts: Hosts, clips: Sequence[Path], batch: int, visibility_timeout_s: float, say=print
) -> dict[str, Any]:
    """Both hosts on one submission; h2's link goes down while it holds a task."""
    n = len(clips)
    env = {"SER_BATCH_SIZE": str(batch), "SER_VISIBILITY_TIMEOUT_S": str(visibility_timeout_s)}
    workers = {host: hosts.worker(host, DB_CUT, **env) for host in ("h1", "h2")}
    for worker in workers.values():
        worker.wait_ready()
    say(f"hosts: link cut, {n} clips in tasks of {batch}")
    sub = hosts.submit(clips, DB_CUT, wait=False, **env)["summary"]["submission"]
    h2 = workers["h2"]
    deadline = time.time() + 120
    # Cut while h2 holds a task it received and has not finished.
    while time.time() < deadline:
        received, succeeded = h2.output().count("] received"), h2.tasks_succeeded("ser.infer")
        if received > succeeded:
            break
        time.sleep(0.01)
    hosts.link("h2", up=False)
    cut_at = time.time()
    done_before = sum(status == "done" for status, _ in hosts.items(sub))
    say(f"hosts: h2's link is down ({done_before}/{n} done); waiting for h1")
    items = hosts.wait_done(sub, timeout=visibility_timeout_s + 30 + 3 * n)
    finished = time.time()
    # The link comes back: h2 must not record again what h1 has finished meanwhile.
    hosts.link("h2", up=True)
    time.sleep(visibility_timeout_s + 3)
    items = hosts.items(sub)
    done = sum(status == "done" for status, _ in items)
    results = task_results(workers.values())
    recorded = sum(r.get("done", 0) for r in results)
    out = {
        "clips": n,
        "visibility_timeout_s": visibility_timeout_s,
        "h2_in_flight_at_cut": received - succeeded,
        "done_before_cut": done_before,
        "cut_to_all_done_s": finished - cut_at,
        "done": done,
        "lost": n - done,
        "duplicated": max(0, recorded - done),
        "tasks_recorded_done": recorded,
    }
    for worker in workers.values():
        hosts.kill(worker)
    return out


def run_hosts(bench, bundle: Path, clips: list[Path]) -> dict[str, Any]:
    """Section of benchmarks/run.py; {"skipped": reason} where namespaces cannot be made."""
    reason = unavailable()
    if reason:
        bench.say(f"hosts: skipped ({reason})")
        return {"skipped": reason}
    chosen = clips[: bench.args.hosts_clips]
    bench.say(f"hosts: 3 network namespaces, {len(chosen)} clips")
    return measure(
        bench.workdir,
        bundle.read_bytes(),
        chosen,
        repeats=bench.args.hosts_repeats,
        batch=bench.args.hosts_batch,
        say=bench.say,
    )


def summary_keys(results: dict[str, Any]) -> dict[str, Any]:
    """The top-level keys of `benchmarks/run.py --json` this section answers; the worker's RSS
    and cold start come from the end-to-end section when it ran, from here otherwise."""
    h = results.get("hosts")
    if not h or "skipped" in h:
        return {}
    out = {
        "scaling_2_hosts": h["scaling_2_hosts"],
        "link_cut_lost": h["link_cut"]["lost"],
        "link_cut_duplicated": h["link_cut"]["duplicated"],
    }
    if "worker_rss_mb" not in results:
        out["worker_rss_mb"] = h["worker_rss_mb"]
        out["worker_cold_start_s"] = h["cold_start"]["spawn_to_first_result_s"]
    return out


def print_rows(results: dict[str, Any]) -> None:
    """This section's lines of the table (benchmarks/report.py prints the others)."""
    h = results.get("hosts")
    if not h:
        return
    if "skipped" in h:
        print(f"3b hosts: skipped ({h['skipped']})")
        return
    one, two, cut = h["host_1"], h["hosts_2"], h["link_cut"]
    print(
        f"3b hosts (network namespaces), clips/s: 1 host {one['clips_s']:7.1f}  wall "
        f"{one['wall_s']:.2f} s, workers {one['processing_s']:.2f} s, "
        f"CPU {one['worker_cpu_ms_per_clip']:.0f} ms/clip"
    )
    print(
        f"  2 worker hosts                             {two['clips_s']:7.1f}  wall "
        f"{two['wall_s']:.2f} s, workers {two['processing_s']:.2f} s; tasks per host "
        f"{two['tasks_per_host']}"
    )
    print(
        f"  scaling, 2 hosts / 1                        {h['scaling_2_hosts']:.2f}x  "
        f"workers' part only {h['scaling_2_hosts_processing']:.2f}x"
    )
    cold = h["cold_start"]["spawn_to_first_result_s"]
    print(f"  worker cold start / RSS             {cold:.2f} s / {h['worker_rss_mb']:.0f} MB")
    print(
        f"  link cut: lost / duplicated                {cut['lost']} / {cut['duplicated']}  "
        f"{cut['clips']} clips, {cut['h2_in_flight_at_cut']} task in flight on the cut host, "
        f"all done {cut['cut_to_all_done_s']:.0f} s after the cut "
        f"(visibility timeout {cut['visibility_timeout_s']:.0f} s)"
    )
