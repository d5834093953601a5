"""What the load test (and the benches) measure of this machine: CPU of a process and its
children, and CPU of the whole machine (the open-file limit that caps listeners:
``core/files.py raise_open_files``)."""

from __future__ import annotations

import psutil


class ProcessCpu:
    """CPU seconds and memory of a process and its children (e.g. nginx's workers), and of
    any ``more`` processes counted with it (e.g. the edges in front of a node)."""

    def __init__(self, pid: int, *more: int) -> None:
        self.pid = pid
        self.pids = (pid, *more)
        self.rss_max = 0

    def cpu_s(self) -> float:
        total = 0.0
        rss = 0
        procs = []
        for pid in self.pids:
            try:
                root = psutil.Process(pid)
                procs += [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        for p in procs:
            try:
                t = p.cpu_times()
                rss += p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
            total += t.user + t.system
        self.rss_max = max(self.rss_max, rss)
        return total


def _busy(times: dict[str, float]) -> tuple[float, float]:
    busy = sum(v for k, v in times.items() if k not in ("idle", "iowait", "guest", "guest_nice"))
    return busy, times.get("softirq", 0.0)


def machine_busy_s() -> tuple[float, float]:
    """CPU seconds all cores of this machine have spent busy since boot, and of those the
    kernel's soft interrupts (on loopback, much of the TCP work of both ends lands there,
    counted against no process)."""
    return _busy(psutil.cpu_times()._asdict())


def cores_busy_s(cpus: tuple[int, ...]) -> tuple[float, float]:
    """``machine_busy_s`` for these CPUs only: with the server pinned to them, everything its
    side costs the machine, the kernel's network work on its core included."""
    per_cpu = psutil.cpu_times(percpu=True)
    busy = [_busy(per_cpu[c]._asdict()) for c in cpus if c < len(per_cpu)]
    return sum(b for b, _ in busy), sum(si for _, si in busy)
