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

from bench.commands.exits import EXIT_FAILED, EXIT_INTERRUPTED
from bench.commands.planning import plan_run
from bench.core.types import CellRun
from bench.execution.invocation import Execution, Plan, execute, finish, measure_peaks
from bench.execution.matrix import LocalExecutor
from bench.recording.perf import DRIFT_LIMIT, drift_lines
from bench.recording.report import speed_mark, table, with_speed_note

REFERENCE_STAGE = "relu-xavier"


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def perf_table(runs: list[CellRun], keras: dict[str, float]) -> str:
    """`keras`: the Keras reference's samples/s on each device (each cell against its own).
    "roofline" is against the machine's peak (the best any installed framework reached),
    "own peak" against the cell's framework's own."""
    header = [
        "stage",
        "backend",
        "device",
        "samples/s",
        "GFLOP/s",
        "roofline",
        "own peak",
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
            rows.append([c.stage, c.backend, c.device] + ["-"] * (len(header) - 3))
            continue
        speed = result.train_samples_per_s
        base = reference.get((c.backend, c.device))
        fit = keras.get(c.device)
        rows.append(
            [
                c.stage,
                c.backend,
                c.device,
                f"{speed:,.0f}{speed_mark(run)}",
                f"{run.speed.get('train_gflops', 0):,.1f}",
                _fraction(run.speed.get("roofline_fraction")),
                _fraction(run.speed.get("framework_roofline_fraction")),
                f"{speed / fit:.2f}" if fit else "-",
                f"{speed / base:.2f}" if base else "-",
                f"{100 * run.speed.get('harness_fraction', 0):.2f}%",
            ]
        )
    return with_speed_note(table(header, rows), runs)


def _check_drift(execution: Execution, plan: Plan) -> list[str]:
    """Measure the peaks again, record how far they moved, and return the report's lines."""
    end = measure_peaks(plan.cells, plan.options, when=" at the end")
    drift, lines = drift_lines(execution.peaks, end)
    metrics = {f"peak_gflops_end_{b}_{d}": v for (b, d), v in end.items()}
    metrics |= {f"peak_drift_{k.replace('/', '_')}": v for k, v in drift.items()}
    execution.tracker.log_metrics(execution.parent_id, metrics)
    # Combined with the cells' verdicts and the start's probe: a false is never made true.
    stable = execution.speed_stable and all(abs(v) <= DRIFT_LIMIT for v in drift.values())
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
    plan = plan_run(args, refuse_busy=not args.allow_busy)
    execution = execute(plan, "perf")
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
    return EXIT_FAILED if finish(execution, plan) else 0
