"""A cell's speed figures: FLOPs per sample, its roofline against the measured peaks
(bench.execution.peaks), where its time went, and how far the peaks drifted over a run."""

from __future__ import annotations

import itertools
import time

from bench.core.spec import StageSpec
from bench.core.types import CellRun, Product, layer_products

# A peak that moves by more than this between the start and the end of the run means that the
# machine's speed changed under it (other load, throttling, a noisy neighbour on a shared host).
DRIFT_LIMIT = 0.10


def flops_per_sample(spec: StageSpec) -> int:
    """Training FLOPs of one sample, as computed: per dense layer, forward 2*in*out and the
    weights' gradient 2*in*out; the inputs' gradient 2*in*out for every layer but the first
    (nothing needs the gradient of the images, and no backend computes it): 1,211,392 for
    784-256-256-10. Products only: the element-wise work is under 1% of it."""
    layers = list(itertools.pairwise(spec.model.layer_sizes))
    products = sum(4 * fan_in * fan_out for fan_in, fan_out in layers)
    return products + sum(2 * fan_in * fan_out for fan_in, fan_out in layers[1:])


def step_products(spec: StageSpec) -> list[Product]:
    """The products one training step of the stage computes (core's layer_products). Their
    FLOPs are flops_per_sample times the batch."""
    return layer_products(spec.training.batch_size, spec.model.layer_sizes)


def machine_peaks(peaks: dict[tuple[str, str], float]) -> dict[str, tuple[float, str]]:
    """Per device, the best peak any installed framework reached, and which one: the
    machine's limit. Each framework's own peak measures its matmul library as much as the
    machine (on one AMD EPYC: TensorFlow's oneDNN 498 GFLOP/s, PyTorch's MKL 221)."""
    best: dict[str, tuple[float, str]] = {}
    for (backend, device), gflops in peaks.items():
        if device not in best or gflops > best[device][0]:
            best[device] = (gflops, backend)
    return best


def attainable_figures(products: list[Product], seconds: float, batch: int) -> dict[str, float]:
    """The step's products took `seconds` a step, timed alone: the samples/s no step that
    computes them can beat on that path, and the GFLOP/s they ran at."""
    flops = sum(p.flops for p in products)
    return {
        "attainable_samples_per_s": batch / seconds,
        "attainable_gflops": flops / seconds / 1e9,
        "attainable_step_us": seconds * 1e6,
    }


def roofline(
    samples_per_s: float | None,
    spec: StageSpec,
    machine_peak: float | None,
    framework_peak: float | None = None,
) -> dict[str, float]:
    """train_gflops of a cell, and where measurable its roofline_fraction (against the
    machine's peak) and framework_roofline_fraction (against its own framework's)."""
    if samples_per_s is None:
        return {}
    gflops = samples_per_s * flops_per_sample(spec) / 1e9
    metrics = {"train_gflops": gflops}
    if machine_peak:
        metrics["roofline_fraction"] = gflops / machine_peak
    if framework_peak:
        metrics["framework_roofline_fraction"] = gflops / framework_peak
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
    start: dict[tuple[str, str], float], end: dict[tuple[str, str], float], what: str = "peak"
) -> tuple[dict[str, float], list[str]]:
    """Each rate's (a peak's, an attainable limit's) relative change over the run, and the
    lines that report it (a warning when one moved past DRIFT_LIMIT: the run's speed figures
    are then not comparable)."""
    drift = {f"{b}/{d}": end[(b, d)] / start[(b, d)] - 1.0 for (b, d) in start if (b, d) in end}
    lines = [f"{what} drift over the run: " + ", ".join(f"{k} {v:+.1%}" for k, v in drift.items())]
    moved = [k for k, v in drift.items() if abs(v) > DRIFT_LIMIT]
    if moved:
        lines.append(
            f"WARNING: the {what} of {', '.join(moved)} moved by more than {DRIFT_LIMIT:.0%} during"
            " the run, so the machine's speed changed under it and these figures are not"
            " comparable; rerun on a quiet machine"
        )
    return drift, lines


def speed_figures(
    run: CellRun,
    specs: dict[str, StageSpec],
    peaks: dict[tuple[str, str], float],
    attainable: dict[tuple[str, str, str], float] | None = None,
) -> dict[str, float]:
    """A finished cell's wall time, where it went, and its throughput against its device's
    measured peak (`peaks`: (backend, device) -> GFLOP/s; empty with --no-peak). Derived once,
    by the execution, before the cell is recorded; the recorder and the perf table read them."""
    assert run.result is not None
    result = run.result
    if run.peaks is not None:  # measured on the node the cell ran on (a cluster executor)
        peaks = run.peaks
    parent = {k: v for k, v in run.timings.items() if k != "started_at"}
    parent["total"] = time.perf_counter() - run.timings["started_at"]
    metrics = {"wall_seconds": run.wall_seconds}
    metrics |= time_breakdown(result.timings, parent, [e.epoch_seconds for e in result.epochs])
    peak = peaks.get((run.cell.backend, run.cell.device))
    machine = machine_peaks(peaks).get(run.cell.device, (None, ""))[0]
    if peak:
        metrics["peak_gflops"] = peak
    if machine:
        metrics["machine_peak_gflops"] = machine
    spec = specs[run.cell.stage]
    metrics |= roofline(result.train_samples_per_s, spec, machine, peak)
    metrics["flops_per_sample"] = float(flops_per_sample(spec))
    step = (attainable or {}).get((run.cell.backend, run.cell.device, run.cell.stage))
    if step:
        limit = attainable_figures(step_products(spec), step, spec.training.batch_size)
        metrics |= limit
        if result.train_samples_per_s is not None:
            share = result.train_samples_per_s / limit["attainable_samples_per_s"]
            metrics["attainable_fraction"] = share
    if run.load is not None:  # the canary and what else ran: bench.execution.load_monitor's
        metrics |= run.load.metrics()
    return metrics
