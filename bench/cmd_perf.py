"""`python -m bench perf`: speed against the machine's limit, and against Keras `model.fit`.

Measures each device's peak matmul rate, runs the stages (30 epochs by default, so the
harness's share is measured on real cells), runs the Keras reference, and prints and records a
table: samples/s, GFLOP/s, roofline fraction, ratio to Keras, ratio to relu-xavier, overhead.
Then it measures the peaks again: one that moved under the run makes its figures suspect.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.cli import EXIT_INTERRUPTED
from bench.cmd_run import Execution, Plan, execute, finish, measure_peaks, plan_run
from bench.matrix import CellRun, LocalExecutor
from bench.perf import DRIFT_LIMIT, drift_lines
from bench.report import table

REFERENCE_STAGE = "relu-xavier"


def perf_table(runs: list[CellRun], keras: dict[str, float]) -> str:
    """`keras`: the Keras reference's samples/s on each device (each cell against its own)."""
    header = [
        "stage",
        "backend",
        "device",
        "samples/s",
        "GFLOP/s",
        "roofline",
        "x Keras fit",
        "vs relu-xavier",
        "harness share",
    ]
    reference = {
        (r.cell.backend, r.cell.device): r.result.train_samples_per_s
        for r in runs
        if r.result is not None and r.cell.stage == REFERENCE_STAGE
    }
    rows = []
    for run in runs:
        c, result = run.cell, run.result
        if result is None or result.train_samples_per_s is None:
            rows.append([c.stage, c.backend, c.device] + ["-"] * 6)
            continue
        speed = result.train_samples_per_s
        base = reference.get((c.backend, c.device))
        fit = keras.get(c.device)
        rows.append(
            [
                c.stage,
                c.backend,
                c.device,
                f"{speed:,.0f}",
                f"{run.speed.get('train_gflops', 0):,.1f}",
                f"{run.speed['roofline_fraction']:.2f}"
                if "roofline_fraction" in run.speed
                else "-",
                f"{speed / fit:.2f}" if fit else "-",
                f"{speed / base:.2f}" if base else "-",
                f"{100 * run.speed.get('harness_fraction', 0):.2f}%",
            ]
        )
    return table(header, rows)


def _check_drift(execution: Execution, plan: Plan) -> list[str]:
    """Measure the peaks again, record how far they moved, and return the report's lines."""
    end = measure_peaks(plan.cells, plan.options, when=" at the end")
    drift, lines = drift_lines(execution.peaks, end)
    metrics = {f"peak_gflops_end_{b}_{d}": v for (b, d), v in end.items()}
    metrics |= {f"peak_drift_{k.replace('/', '_')}": v for k, v in drift.items()}
    execution.tracker.log_metrics(execution.parent_id, metrics)
    stable = all(abs(v) <= DRIFT_LIMIT for v in drift.values())
    execution.tracker.set_tags(execution.parent_id, {"speed_stable": str(stable).lower()})
    return lines


def _keras(plan: Plan, epochs: int, device: str) -> float:
    with tempfile.TemporaryDirectory(prefix="mlp-bench-keras-") as tmp:
        rate = LocalExecutor().keras_reference(
            REFERENCE_STAGE, plan.options, epochs, device, Path(tmp)
        )
    print(
        f"Keras model.fit reference, {REFERENCE_STAGE} on {device}: {rate:,.0f} samples/s",
        flush=True,
    )
    return rate


def _table(execution: Execution, plan: Plan, keras_epochs: int) -> str:
    """The Keras reference on each device, the table and the peaks' drift, recorded on the
    parent run."""
    keras: dict[str, float] = {}
    if keras_epochs:
        for device in dict.fromkeys(c.device for c in plan.cells):
            keras[device] = _keras(plan, keras_epochs, device)
        metrics = {f"keras_fit_samples_per_s_{d}": v for d, v in keras.items()}
        execution.tracker.log_metrics(execution.parent_id, metrics)
    text = perf_table(execution.runs, keras)
    if execution.peaks:  # measured at the start unless --no-peak
        text += "\n\n" + "\n".join(_check_drift(execution, plan))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "perf_table.txt"
        path.write_text(text + "\n")
        execution.tracker.log_artifact(execution.parent_id, path)
    return text


def cmd_perf(args: argparse.Namespace) -> int:
    plan = plan_run(args)
    execution = execute(plan, args, "perf")
    if execution.interrupted:
        return EXIT_INTERRUPTED
    try:
        text = _table(execution, plan, args.keras_epochs)
    except KeyboardInterrupt:
        execution.tracker.end(execution.parent_id, "KILLED")
        print("\ninterrupted: the cells are recorded, the perf table is not")
        return EXIT_INTERRUPTED
    except BaseException:  # a failed Keras reference or peak: the parent run must not stay open
        execution.tracker.end(execution.parent_id, "FAILED")
        raise
    print()
    print(text)
    return finish(execution, plan)
