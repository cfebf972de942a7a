"""What a process holds and has spent, read from /proc: the benchmark's memory and CPU figures."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path


def proc_status(pid: int | str = "self") -> dict[str, float]:
    """Memory lines of /proc/PID/status in MiB (VmHWM = peak RSS)."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) / 1024
    return out


def child_pids(pid: int) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of these processes so far (/proc/PID/stat)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class PeakMemory:
    """Samples this process's RSS and anonymous RSS every 20 ms in a thread: VmHWM counts the
    pages of memory-mapped files too (the training cache), which the kernel can drop at will;
    anonymous memory is what the process really holds."""

    def __init__(self) -> None:
        self.peak = {"RssAnon": 0.0, "VmRSS": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            status = proc_status()
            for key in self.peak:
                self.peak[key] = max(self.peak[key], status.get(key, 0.0))
            self._stop.wait(0.02)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return self.peak
