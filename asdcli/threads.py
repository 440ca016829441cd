"""How many CPU threads torch may use: `--threads N`, or a default that never oversubscribes.

torch's own default is one thread per core of the machine. On a shared or container-limited machine that is
more threads than there are cores free, and OpenMP's threads then wait on each other at every parallel region:
on a 2-core machine busy with other work, the tiny recipe ran 6x slower with 2 threads than with 1 (BENCHMARKS
§1). The default therefore counts the cores this process may run on (CPU affinity and the cgroup CPU quota),
less the cores other processes keep busy right now (sampled from /proc/stat while torch loads, see
`BusySampler`), and is never below 1. torch's inter-op pool is
one thread: nothing here runs independent graph branches in parallel, and each extra pool thread only competes.

This module imports torch only inside `apply_threads`, so `asd --help` stays light.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from asdcli.errors import UserError

MAX_THREADS = 1024


def usable_cpus() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2/v1 CPU quota when one is set."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


def _cgroup_quota() -> float | None:
    """CPUs the cgroup quota allows (cpu.max "QUOTA PERIOD" or cfs_quota_us / cfs_period_us); None if unlimited."""
    try:
        text = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def _jiffies(cores: set[int]) -> tuple[int, int] | None:
    """(busy, total) clock ticks summed over `cores` from /proc/stat; None where it cannot be read (not Linux)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0
    for line in lines:
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or not name[3:].isdigit() or int(name[3:]) not in cores:
            continue
        ticks = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(ticks)
        busy += sum(ticks) - ticks[3] - ticks[4]
    return (busy, total) if total else None


class BusySampler:
    """Cores kept busy by OTHER processes over an interval: the busy time of the cores this process may use, less
    this process's own CPU time. Unlike the load average it forgets a job that has just finished (the 1-minute
    average of a machine idle since the user's last run still reads ~1, which halved the threads on an idle
    2-core machine: the ShapesWorld recipe then ran 1.7x slower than with 2 threads)."""

    def __init__(self) -> None:
        try:
            self.cores = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            self.cores = set(range(os.cpu_count() or 1))
        self.start, self.cpu0, self.wall0 = _jiffies(self.cores), time.process_time(), time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.wall0

    def others(self) -> float | None:
        """Busy cores not counting this process over the interval; None without /proc/stat or a long enough one."""
        end = _jiffies(self.cores)
        if self.start is None or end is None:
            return None
        busy, total = end[0] - self.start[0], end[1] - self.start[1]
        if total < 10 * len(self.cores):  # under ~0.1 s of ticks a core: too coarse to tell
            return None
        own = (time.process_time() - self.cpu0) * os.sysconf("SC_CLK_TCK")
        return max(0.0, (busy - own) / (total / len(self.cores)))


def _others_now(sample_s: float = 0.2) -> float:
    """Cores busy with other work, sampled for `sample_s` (the 1-minute load average where /proc/stat is absent)."""
    sampler = BusySampler()
    time.sleep(sample_s)
    others = sampler.others()
    if others is not None:
        return others
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def default_threads(cpus: int | None = None, load: float | None = None) -> int:
    """The default thread count: an explicit OMP_NUM_THREADS wins; else usable cores less the busy ones.

    cpus: usable cores (default `usable_cpus()`); load: cores busy with other work right now (default: sampled
    for 0.2 s, `_others_now`), rounded to the nearest core."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return min(int(env), MAX_THREADS)
    cpus = usable_cpus() if cpus is None else cpus
    if load is None:
        load = _others_now()
    return max(1, min(cpus, cpus - math.floor(load + 0.5)))


def check_threads(value: int | None, what: str = "--threads") -> int | None:
    """Validate a requested thread count (None = the default)."""
    if value is not None and not 1 <= value <= MAX_THREADS:
        raise UserError(f"{what}: must be between 1 and {MAX_THREADS}, got {value}; omit it for the default "
                        f"({default_threads()} on this machine now)")
    return value


def apply_threads(value: int | None = None) -> int:
    """Set torch's intra-op threads to `value` (or the default) and its inter-op pool to 1; returns the count.

    Call it before any heavy work: the inter-op pool can be sized only before torch first uses it (later calls
    keep the pool as it is and still set the intra-op count)."""
    sampler = BusySampler()
    import torch  # ~1 s of CPU on a cold start: the others' load is sampled over it at no extra wall time

    if check_threads(value) is not None:
        n = value
    else:
        others = sampler.others() if sampler.elapsed() >= 0.2 else None
        n = default_threads(load=others)  # None: torch was loaded already, so sample 0.2 s now
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already started (a second call in one process, or a library used it first)
        pass
    return n
