"""Torch's CPU thread count, adapted to how busy the machine is.

PyTorch's OpenMP threads wait for each other at the end of every parallel operator. When another busy
process takes one of their cores, every operator waits for the thread the scheduler parked, and a
2-thread run on 2 cores slows several-fold instead of by its fair share (docs/benchmarks.md measures it).
:class:`ThreadGovernor` watches the machine's CPU use (``/proc/stat``) minus the process's own, and gives
torch the cores the rest of the machine leaves free: all of ``max_threads`` on an idle machine, fewer
while other processes keep cores busy. It is called from the training loop, between steps, because
torch's thread count is set per calling thread.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

_PROC_STAT = Path("/proc/stat")


def machine_busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (``/proc/stat``), or None where it is missing."""
    try:
        with _PROC_STAT.open() as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class ThreadGovernor:
    """Call :meth:`update` between steps; every ``interval_s`` seconds it re-measures the cores the other
    processes used and sets ``torch.set_num_threads`` to the cores left, rounded, between 1 and
    ``max_threads``, the thread count torch had when the governor was made (``OMP_NUM_THREADS`` or
    ``torch.set_num_threads`` still cap it)."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self.max_threads = torch.get_num_threads()
        self.cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.interval_s = interval_s
        self.threads = torch.get_num_threads()
        self._last = self._sample()

    @property
    def enabled(self) -> bool:
        """Whether there is anything to govern: more than one thread allowed and ``/proc/stat`` readable."""
        return self.max_threads > 1 and self._last[1] is not None

    def _sample(self) -> tuple[float, float | None, float]:
        return time.monotonic(), machine_busy_seconds(), time.process_time()

    def others_busy_cores(self) -> float | None:
        """Cores the other processes kept busy since the last measurement (None before ``interval_s``)."""
        now = self._sample()
        elapsed = now[0] - self._last[0]
        if elapsed < self.interval_s or now[1] is None or self._last[1] is None:
            return None
        others = (now[1] - self._last[1]) - (now[2] - self._last[2])
        self._last = now
        return max(others, 0.0) / elapsed

    def update(self) -> int:
        """Adjust torch's thread count if due; returns the count in force."""
        if not self.enabled:
            return self.threads
        others = self.others_busy_cores()
        if others is not None:
            wanted = min(self.max_threads, max(1, round(self.cores - others)))
            if wanted != self.threads:
                torch.set_num_threads(wanted)
                self.threads = wanted
        return self.threads

    def restore(self) -> None:
        """Give torch back the thread count it had at the start."""
        if self.threads != self.max_threads:
            torch.set_num_threads(self.max_threads)
            self.threads = self.max_threads
