"""What else the machine's CPUs did over an interval: other processes' CPU use and a VM's
steal, from /proc/stat and getrusage. Framework-free; read by the load monitor around cells
and by a backend that measures something it keeps (a choice timed on a busy machine is not).
Where /proc/stat does not exist (not Linux) the figures are None: "not measured"."""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path

# Other processes using more than this many cores make a timing suspect: on a 2-core machine a
# quarter core taken from a 2-thread cell is a 12% slowdown.
BUSY_CORES = 0.25
# A VM whose hypervisor gives more than this share of the CPU time to other guests.
STEAL_LIMIT = 0.10
PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class CpuTimes:
    """The machine's CPU time so far (all cores, in clock ticks), from /proc/stat's first line,
    and the monotonic clock when it was read."""

    user: int
    nice: int
    system: int
    idle: int
    iowait: int
    irq: int
    softirq: int
    steal: int
    at: float

    @property
    def busy(self) -> int:
        """Ticks some process (or the kernel for it) ran; idle, iowait and steal are not."""
        return self.user + self.nice + self.system + self.irq + self.softirq

    @property
    def total(self) -> int:
        return self.busy + self.idle + self.iowait + self.steal


def cpu_times(stat: Path = PROC_STAT) -> CpuTimes | None:
    """/proc/stat's aggregate `cpu` line now; None where there is no /proc/stat."""
    try:
        first = stat.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    ticks = [int(value) for value in first[1:9]]
    ticks += [0] * (8 - len(ticks))  # kernels before 2.6.11 stop before steal
    user, nice, system, idle, iowait, irq, softirq, steal = ticks
    return CpuTimes(user, nice, system, idle, iowait, irq, softirq, steal, time.monotonic())


def own_cpu_seconds() -> float:
    """CPU seconds of this process and its reaped children (each cell's worker is one, waited
    for before the after-sample is taken)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


@dataclass(frozen=True)
class CpuSample:
    """What `others_cores` compares: the machine's CPU time and ours, read together."""

    times: CpuTimes | None
    own_seconds: float


def cpu_sample() -> CpuSample:
    return CpuSample(cpu_times(), own_cpu_seconds())


def others_cores(before: CpuTimes, after: CpuTimes, own_cpu_seconds: float) -> float:
    """Cores' worth of CPU used by processes other than ours between two samples: the machine's
    busy time less our own, over the wall time. Clipped at 0: /proc/stat counts in 10 ms ticks,
    getrusage exactly, so a quiet machine can read a hair below 0."""
    wall = after.at - before.at
    if wall <= 0:
        return 0.0
    busy_seconds = (after.busy - before.busy) / os.sysconf("SC_CLK_TCK")
    return max(0.0, (busy_seconds - own_cpu_seconds) / wall)


def steal_fraction(before: CpuTimes, after: CpuTimes) -> float:
    """The share of the interval's CPU time the hypervisor gave to other guests."""
    total = after.total - before.total
    return (after.steal - before.steal) / total if total > 0 else 0.0


@dataclass(frozen=True)
class Activity:
    """What else ran over an interval; None where not measured (no /proc/stat)."""

    others_cores: float | None
    steal_fraction: float | None
    load1: float | None  # the 1-minute load average at the end


def activity_between(before: CpuSample, after: CpuSample) -> Activity:
    if before.times is None or after.times is None:
        return Activity(None, None, load1())
    own = after.own_seconds - before.own_seconds
    return Activity(
        others_cores(before.times, after.times, own),
        steal_fraction(before.times, after.times),
        load1(),
    )


def load1() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None
