"""Is the machine quiet enough to time on? Other processes' CPU use, a VM's steal, and a short
canary shaped like the work, measured around each cell.

Why: with a second process on the same 2 cores the torch cells fell 5-17x, and two `perf` runs
20 minutes apart gave TensorFlow adam 127,848 and 240,424 samples/s (each run's epochs steady:
a uniform slowdown from outside) while the peak measured at a run's start and end moved by
0.1%. Nothing said so.

Framework-free (numpy and the standard library): it runs in the driver process, around the
cells' own processes. Where /proc/stat does not exist (not Linux) the CPU figures are None:
"not measured", never a failure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from bench.core.cpu_activity import (
    BUSY_CORES,
    STEAL_LIMIT,
    Activity,
    CpuSample,
    activity_between,
    cpu_sample,
)
from bench.core.types import CellLoad, CellRun

# The canary's rate moving by more than this between before and after a cell: the machine's
# speed changed under the cell. Not 10%: on this 2-core VM, quiet (other processes < 0.01
# cores), two canaries 1-3 s apart differed by more than 10% in 41-56% of ~80 pairs and by
# more than 25% in 5-13%: its speed swings ~14% (one standard deviation) from second to second.
# The slowdowns to catch are 1.6-2x (-37% to -50%).
CANARY_LIMIT = 0.25
# Before and after differing by more than this factor: no load explains it (a process spinning
# on every core slows the one-thread canary 1.5-3x), so the canary failed to measure the
# machine. Its figures are kept, its verdict is not taken: a measurement failure, not a busy
# machine.
CANARY_BELIEVABLE = 10.0
# The steady epochs' p75/p25 samples/s above this: the cell's own epochs disagree. Not 1.25:
# quiet 10-epoch relu-xavier cells on the same VM read 1.19 (TensorFlow) and 1.20 (torch); a
# second process on the cores spread them 2.4-7x.
SPREAD_LIMIT = 1.5
PROBE_SECONDS = 1.0
CANARY_SECONDS = 0.3  # each canary: ~0.6 s per cell, before and after
CANARY_STEPS = 4  # training steps per burst (~15 ms on one core); the median burst is kept
CANARY_MIN_BURSTS = 5
# One BLAS thread for the canary's products. With numpy's default of one per core, OpenBLAS
# splits each batch-100 product between threads that must all finish it: a thread whose core
# another process holds stalls the product for a scheduler time slice, so any other work on
# the cores made the canary's rate a lottery (up to 85x between two canaries; docs/speed.md,
# "The canary"). One thread slows as its share of a core does, and no more.
CANARY_THREADS = 1
# Float32 operations per sample of the canary's step (forward, softmax aside; backward without
# the images' gradient), the bounds of a believable rate below: one thread doing more than
# 1,000 GFLOP/s (four times a 4 GHz AVX-512 core's peak) or under 0.01 GFLOP/s (a core shared
# a thousand ways) means a broken clock or a stopped process, not a machine's speed.
CANARY_LAYERS = ((784, 256), (256, 256), (256, 10))
CANARY_FLOPS_PER_SAMPLE = 2 * sum(a * b for a, b in CANARY_LAYERS) * 3 - 2 * 784 * 256
CANARY_RATE_BOUNDS = (0.01e9 / CANARY_FLOPS_PER_SAMPLE, 1000e9 / CANARY_FLOPS_PER_SAMPLE)


def probe_activity(seconds: float = PROBE_SECONDS) -> Activity:
    """Sleep `seconds` and see what the rest of the machine did meanwhile."""
    before = cpu_sample()
    time.sleep(seconds)
    return activity_between(before, cpu_sample())


def busy_reason(activity: Activity, cores: int) -> str | None:
    """Why the machine is too busy to time on and what would fix it, in one line ("other
    processes use 0.9 of 2 cores (load 1.8); stop them"); None when it is quiet enough.

    Only the probe decides: the load average counts runnable threads over the last minute, so
    it still shows a run that just ended (ours included) and would refuse a machine that is
    quiet now. It is named in the message, as a hint of what the probe saw.
    """
    load = f" (load {activity.load1:.1f})" if activity.load1 is not None else ""
    if activity.others_cores is not None and activity.others_cores > BUSY_CORES:
        return f"other processes use {activity.others_cores:.1f} of {cores} cores{load}; stop them"
    if activity.steal_fraction is not None and activity.steal_fraction > STEAL_LIMIT:
        return (
            f"the hypervisor gives {activity.steal_fraction:.0%} of the CPU time to other"
            f" guests (steal){load}; wait for a quieter host"
        )
    return None


def _canary_step(x: np.ndarray, onehot: np.ndarray, weights: list[np.ndarray]) -> None:
    """One training step's arithmetic of the tutorial's model, batch 100: forward, softmax,
    backward (no gradient for the images, as in the cells), no update."""
    w1, w2, w3 = weights
    h1 = x @ w1
    a1 = np.maximum(h1, 0)
    h2 = a1 @ w2
    a2 = np.maximum(h2, 0)
    z = a2 @ w3
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dz = (p - onehot) / np.float32(len(x))
    _ = a2.T @ dz
    dh2 = (dz @ w3.T) * (h2 > 0)
    _ = a1.T @ dh2
    dh1 = (dh2 @ w2.T) * (h1 > 0)
    _ = x.T @ dh1


def canary(seconds: float = CANARY_SECONDS) -> float:
    """Samples/s of a fixed workload shaped like the cells' (batch-100 products of 784-256-256-10
    and element-wise passes, float32): the median of short bursts, robust to one interrupted.

    Not a 2048x2048 product: in the hour TensorFlow's cells ran 1.6x slower (170k against 271k
    samples/s), such a product read 453 against 498 GFLOP/s: large products hide what slows
    small ones.
    """
    rng = np.random.default_rng(0)
    x = rng.random((100, 784), dtype=np.float32)
    onehot = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 100)]
    weights = [
        rng.standard_normal(size, dtype=np.float32) * np.float32(0.05) for size in CANARY_LAYERS
    ]
    rates: list[float] = []
    with threadpool_limits(limits=CANARY_THREADS):
        _canary_step(x, onehot, weights)  # warm-up: first-touch pages
        deadline = time.perf_counter() + seconds
        while len(rates) < CANARY_MIN_BURSTS or time.perf_counter() < deadline:
            start = time.perf_counter()
            for _ in range(CANARY_STEPS):
                _canary_step(x, onehot, weights)
            rates.append(CANARY_STEPS * len(x) / (time.perf_counter() - start))
    return float(np.median(rates))


def canary_failure(canary_before: float, canary_after: float) -> str:
    """Why the two canaries around a cell cannot be believed, in a line ("canary unreliable:
    85x between before and after"); "" when they can. A rate no CPU gives, or a change no
    load explains, says the canary measured something other than the machine."""
    for when, rate in (("before", canary_before), ("after", canary_after)):
        if not CANARY_RATE_BOUNDS[0] <= rate <= CANARY_RATE_BOUNDS[1]:
            return f"canary unreliable: {rate:,.0f} samples/s {when}"
    factor = max(canary_before, canary_after) / min(canary_before, canary_after)
    if factor > CANARY_BELIEVABLE:
        return f"canary unreliable: {factor:.0f}x between before and after"
    return ""


def unstable_reasons(
    canary_before: float,
    canary_after: float,
    activity: Activity,
    spread: dict[str, float],
) -> tuple[str, ...]:
    """Why a cell's speed is not to be trusted; empty when it is. `spread` is the cell's
    steady-epoch samples/s quartiles (CellResult.spread; empty without steady epochs). A canary
    that failed to measure (canary_failure) gives no reason: the others judge alone."""
    reasons = []
    if not canary_failure(canary_before, canary_after):
        change = canary_after / canary_before - 1.0
        if abs(change) > CANARY_LIMIT:
            reasons.append(f"canary {change:+.0%}")
    if activity.others_cores is not None and activity.others_cores > BUSY_CORES:
        reasons.append(f"other processes used {activity.others_cores:.2f} cores")
    if activity.steal_fraction is not None and activity.steal_fraction > STEAL_LIMIT:
        reasons.append(f"steal {activity.steal_fraction:.0%}")
    if spread.get("p25", 0) > 0 and spread["p75"] / spread["p25"] > SPREAD_LIMIT:
        reasons.append(f"epochs p75/p25 {spread['p75'] / spread['p25']:.2f}")
    return tuple(reasons)


@dataclass(frozen=True)
class Watch:
    """The before-half of a cell's watch: the canary, then the CPU sample that opens the
    interval (so neither canary is counted in it)."""

    canary: float
    sample: CpuSample


def watch_before() -> Watch:
    return Watch(canary(), cpu_sample())


def watch_after(before: Watch, spread: dict[str, float]) -> CellLoad:
    """Close the interval, run the canary again, and judge the cell."""
    activity = activity_between(before.sample, cpu_sample())
    after = canary()
    return CellLoad(
        before.canary,
        after,
        activity.others_cores,
        activity.steal_fraction,
        unstable_reasons(before.canary, after, activity, spread),
        canary_failure(before.canary, after),
    )


def canary_failure_lines(runs: list[CellRun]) -> list[str]:
    """A line for each cell whose canary failed to measure, said apart from "speed not stable":
    it is no verdict on the machine, and the cell's speed was judged without it."""
    return [
        f"{run.cell.name}: {run.load.canary_failure} (a failed measurement, not a busy machine;"
        " its speed is judged by other processes' CPU use and its epochs)"
        for run in runs
        if run.load is not None and run.load.canary_failure
    ]
