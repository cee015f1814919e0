"""`python -m bench perf`: speed against the machine's limit, and against Keras `model.fit`.

Measures each device's peak matmul rate, runs the stages (30 epochs by default, so the
harness's share is measured on real cells), runs the Keras reference, and prints and records a
table: samples/s, GFLOP/s, roofline fraction, ratio to Keras, ratio to relu-xavier, overhead.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.cli import EXIT_INTERRUPTED
from bench.cmd_run import Plan, execute, finish, plan_run
from bench.matrix import CellRun, LocalExecutor
from bench.report import table

REFERENCE_STAGE = "relu-xavier"


def perf_table(runs: list[CellRun], keras: float | None) -> str:
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
                f"{speed / keras:.2f}" if keras else "-",
                f"{speed / base:.2f}" if base else "-",
                f"{100 * run.speed.get('harness_fraction', 0):.2f}%",
            ]
        )
    return table(header, rows)


def _keras(plan: Plan, epochs: int) -> float:
    with tempfile.TemporaryDirectory(prefix="mlp-bench-keras-") as tmp:
        rate = LocalExecutor().keras_reference(REFERENCE_STAGE, plan.options, epochs, Path(tmp))
    print(f"Keras model.fit reference, {REFERENCE_STAGE}: {rate:,.0f} samples/s", flush=True)
    return rate


def cmd_perf(args: argparse.Namespace) -> int:
    plan = plan_run(args)
    execution = execute(plan, args, "perf")
    if execution.interrupted:
        return EXIT_INTERRUPTED
    keras = None
    if args.keras_epochs and any(c.device == "cpu" for c in plan.cells):
        keras = _keras(plan, args.keras_epochs)
        execution.tracker.log_metrics(execution.parent_id, {"keras_fit_samples_per_s": keras})
    text = perf_table(execution.runs, keras)
    print()
    print(text)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "perf_table.txt"
        path.write_text(text + "\n")
        execution.tracker.log_artifact(execution.parent_id, path)
    return finish(execution, plan)
