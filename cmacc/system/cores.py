"""CPU budget of one training process: torch threads and DataLoader workers from the cores it may use.

Oversubscription is the CPU's silent slowdown: torch's intra-op threads spin at barriers, so when
threads, loader workers and other processes want more cores than there are, a step waits on
descheduled threads (on a 2-core machine with one other busy process a step took several times
longer at 2 threads than at 1). The budget:

  cores   = the CPUs this process may run on (affinity, and a cgroup quota such as
            ``docker --cpus``), shared evenly by the ranks on this host;
  workers = data.num_workers, capped at cores - 1 so the main process keeps a core;
  threads = run.threads, or (0 = auto) cores - workers, at least 1.

The thread count is a function of the machine and config only, never of the load at start: a
CPU run's floating-point sums depend on it, so an exact resume needs the same count. A busy
machine (load average above the free cores) gets a warning instead.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("cmacc")


def cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by a cgroup v2 (``cpu.max``) or v1 (``cfs_quota_us``) quota; None without one."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup quota."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpus()
    return max(1, min(n, math.ceil(quota))) if quota else n


@dataclass(frozen=True)
class Budget:
    cores: int  # cores for this rank
    threads: int  # torch intra-op threads of the main process
    workers: int  # DataLoader worker processes (one thread each)
    workers_asked: int
    threads_asked: int  # run.threads (0 = auto)
    load: float | None  # 1-minute load average at start (other processes included)

    def to_dict(self) -> dict:
        return asdict(self)


def plan(threads: int, workers: int, local_world: int = 1, cores: int | None = None) -> Budget:
    """The budget for run.threads = ``threads`` and data.num_workers = ``workers`` (see module doc)."""
    host = available_cores() if cores is None else cores
    mine = max(1, host // max(1, local_world))
    w = min(workers, max(0, mine - 1))
    t = threads or max(1, mine - w)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return Budget(mine, t, w, workers, threads, load)


def apply(b: Budget, local_world: int = 1) -> None:
    """Set torch's threads and say what was capped or looks contended."""
    import torch
    torch.set_num_threads(b.threads)
    if b.workers < b.workers_asked:
        log.warning("data.num_workers=%d capped to %d: this process has %d core(s) and keeps one for itself",
                    b.workers_asked, b.workers, b.cores)
    if b.threads_asked and b.threads_asked + b.workers > b.cores:
        log.warning("run.threads=%d plus %d loader worker(s) exceed this process's %d core(s): threads will "
                    "wait on each other (run.threads=0 picks %d)", b.threads_asked, b.workers, b.cores,
                    max(1, b.cores - b.workers))
    if b.load is not None and b.load > b.cores * local_world - 0.5:  # our process has barely started
        log.warning("this machine is busy (load average %.1f on %d core(s)) before the run starts: torch's "
                    "%d thread(s) will compete with other processes; --set run.threads=1 is the stable choice "
                    "on a shared machine", b.load, b.cores * local_world, b.threads)
