"""How many CPU threads torch may use: `--threads N`, or a default that never oversubscribes.

torch's own default is one thread per core of the machine. On a shared or container-limited machine that is
more threads than there are cores free, and OpenMP's threads then wait on each other at every parallel region:
on a 2-core machine busy with other work, the tiny recipe ran 6x slower with 2 threads than with 1 (BENCHMARKS
§1). The default therefore counts the cores this process may run on (CPU affinity and the cgroup CPU quota),
less the cores other work keeps busy (the 1-minute load average), and is never below 1. torch's inter-op pool is
one thread: nothing here runs independent graph branches in parallel, and each extra pool thread only competes.

This module imports torch only inside `apply_threads`, so `asd --help` stays light.
"""

from __future__ import annotations

import math
import os
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


def default_threads(cpus: int | None = None, load: float | None = None) -> int:
    """The default thread count: an explicit OMP_NUM_THREADS wins; else usable cores less the busy ones.

    cpus: usable cores (default `usable_cpus()`); load: cores busy with other work (default the 1-minute load
    average, which may count this process's own start-up, so it is rounded down)."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return min(int(env), MAX_THREADS)
    cpus = usable_cpus() if cpus is None else cpus
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    return max(1, min(cpus, cpus - math.floor(load)))


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
    import torch

    n = check_threads(value) or default_threads()
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already started (a second call in one process, or a library used it first)
        pass
    return n
