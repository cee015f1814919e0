"""Speed against the machine's limit: FLOPs per sample, the peak matmul rate, where time goes."""

from __future__ import annotations

import itertools
import math

from bench.spec import StageSpec

PEAK_SECONDS = 1.0  # each timed burst of products; the best of three bursts is kept
# A peak that moves by more than this between the start and the end of the run means that the
# machine's speed changed under it (other load, throttling, a noisy neighbour on a shared host).
DRIFT_LIMIT = 0.10


def flops_per_sample(spec: StageSpec) -> int:
    """Training FLOPs of one sample: per dense layer, forward 2*in*out, backward 4*in*out
    (gradients of the weights and of the inputs): 1.61 MFLOP for 784-256-256-10."""
    sizes = spec.model.layer_sizes
    return sum(6 * fan_in * fan_out for fan_in, fan_out in itertools.pairwise(sizes))


def peak_size(device: str) -> int:
    """Matrix side for the peak measurement: large enough to saturate the device."""
    return 8192 if device == "gpu" else 2048


def measure_peak(backend_name: str, device: str, threads: int, tf32: bool = False) -> float:
    """Peak dense float32 matmul GFLOP/s through the framework itself (best of 3 bursts);
    with `tf32`, TF32 products allowed, as in the cells that it is the limit of."""
    from backends import load_backend
    from backends.base import Settings

    settings = Settings(deterministic=False, tf32=tf32)
    backend = load_backend(backend_name)(device, threads, settings)  # type: ignore[arg-type]
    size = peak_size(device)
    probe = backend.matmul_seconds(size, 2) / 2
    repeats = max(3, math.ceil(PEAK_SECONDS / max(probe, 1e-6)))
    best = min(backend.matmul_seconds(size, repeats) for _ in range(3))
    return 2.0 * size**3 * repeats / best / 1e9


def roofline(
    samples_per_s: float | None, spec: StageSpec, peak_gflops: float | None
) -> dict[str, float]:
    """train_gflops and roofline_fraction (achieved / peak) of a cell, where measurable."""
    if samples_per_s is None:
        return {}
    gflops = samples_per_s * flops_per_sample(spec) / 1e9
    metrics = {"train_gflops": gflops}
    if peak_gflops:
        metrics["roofline_fraction"] = gflops / peak_gflops
    return metrics


# The harness's own work in a cell, as opposed to the framework's (import, build, training,
# evaluation) and the interpreter's start: what mlp-bench adds to every measurement.
HARNESS_PHASES = ("data_load", "dropout_masks", "mlflow_logging", "display", "bookkeeping")


def time_breakdown(
    child: dict[str, float], parent: dict[str, float], epoch_seconds: list[float]
) -> dict[str, float]:
    """Where a cell's wall time went, per phase, and the harness's share of it.

    `child` holds the phases timed inside the cell's process, `parent` those timed around it
    (process_start, mlflow_logging, display, total: spawn to the last record). Bookkeeping is
    what no phase accounts for: event passing, result files, process exit.
    """
    phases = {**child, **{k: v for k, v in parent.items() if k != "total"}}
    total = parent["total"]
    phases["bookkeeping"] = max(0.0, total - sum(phases.values()))
    if len(epoch_seconds) > 1:
        # Tracing/compilation: what the first epoch took beyond a steady one (inside "train").
        steady = float(sorted(epoch_seconds[1:])[len(epoch_seconds[1:]) // 2])
        phases["compilation"] = max(0.0, epoch_seconds[0] - steady)
    harness = sum(phases.get(k, 0.0) for k in HARNESS_PHASES)
    metrics = {f"time_{k}_seconds": v for k, v in phases.items()}
    metrics["time_total_seconds"] = total
    metrics["harness_seconds"] = harness
    metrics["harness_fraction"] = harness / total if total > 0 else 0.0
    return metrics


def drift_lines(
    start: dict[tuple[str, str], float], end: dict[tuple[str, str], float]
) -> tuple[dict[str, float], list[str]]:
    """Each peak's relative change over the run, and the lines that report it (a warning when
    one moved past DRIFT_LIMIT: the run's speed figures are then not comparable)."""
    drift = {f"{b}/{d}": end[(b, d)] / start[(b, d)] - 1.0 for (b, d) in start if (b, d) in end}
    lines = ["peak drift over the run: " + ", ".join(f"{k} {v:+.1%}" for k, v in drift.items())]
    moved = [k for k, v in drift.items() if abs(v) > DRIFT_LIMIT]
    if moved:
        lines.append(
            f"WARNING: the peak of {', '.join(moved)} moved by more than {DRIFT_LIMIT:.0%} during"
            " the run, so the machine's speed changed under it and these figures are not"
            " comparable; rerun on a quiet machine"
        )
    return drift, lines
