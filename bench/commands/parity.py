"""`python -m bench parity`: every installed backend (or those named), same seed, parity mode;
every pair compared step by step, each pair recorded as a parity run of its own."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from backends import check_backend, installed_backends
from bench.commands.arguments import MAX_SEED, add_common, int_in
from bench.commands.exits import EXIT_FAILED, EXIT_INTERRUPTED
from bench.core.data import ensure_data
from bench.core.devices import DEVICE_CHOICES, available_cores
from bench.core.errors import BenchError
from bench.core.provenance import git_state
from bench.core.spec import load_stage
from bench.execution.device_choice import resolve_devices
from bench.execution.matrix import LocalExecutor
from bench.execution.parity_check import ParityReport, parity_options, run_parity, write_curve
from bench.recording.run_report import command_line, report_safely
from bench.recording.tracking import DEFAULT_EXPERIMENT, Tracker, resolve_tracking_uri

NAME = "parity"
HELP = "train every backend in parity mode; compare each pair step by step"
MAX_PARITY_STEPS = 100_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", required=True)
    parser.add_argument(
        "--steps", type=int_in(1, MAX_PARITY_STEPS), default=550, help="default: 550 (1 epoch)"
    )
    parser.add_argument(
        "--backend", action="append", help="two or more (repeatable); default: all installed"
    )
    parser.add_argument("--device", choices=DEVICE_CHOICES, default="cpu")
    parser.add_argument("--seed", type=int_in(0, MAX_SEED), default=0)
    add_common(parser)
    parser.set_defaults(accumulate="float64")  # run and perf: only with --parity


def _record(tracker: Tracker, report: ParityReport, steps: int) -> str:
    run_id = tracker.start_parent(
        f"parity-{'-'.join(report.losses)}-{report.stage}-{report.dtype}-{report.accumulate}"
        f"-{report.device}-seed{report.seed}",
        params={
            "stage": report.stage,
            "dtype": report.dtype,
            "accumulate": report.accumulate,
            "device": report.device,
            "seed": str(report.seed),
            "steps": str(steps),
            "backends": ",".join(report.losses),
            "tolerance": f"{report.tolerance:g}",
            "tolerance_window": str(report.checked),
        },
        tags={
            "kind": "parity",
            "stage": report.stage,
            "passed": str(report.passed).lower(),
            **git_state(),
        },
    )
    metrics = {f"max_rel_loss_diff_first_{n}": v for n, v in report.windows.items()}
    metrics |= {
        "final_weights_max_rel_diff": report.weight_rel_diff,
        "passed": float(report.passed),
    }
    tracker.log_metrics(run_id, {k: min(v, 1e308) for k, v in metrics.items()})
    with tempfile.TemporaryDirectory() as tmp:
        for path in write_curve(report, Path(tmp)):
            tracker.log_artifact(run_id, path)
    tracker.end(run_id, "FINISHED")
    return run_id


def run(args: argparse.Namespace) -> int:
    backends = list(dict.fromkeys(args.backend or installed_backends()))
    for backend in backends:
        check_backend(backend)
    if len(backends) < 2:
        raise BenchError(
            f"parity needs two backends or more, not {', '.join(backends) or 'none'};"
            " name them with --backend (repeatable) or install another"
        )
    [device] = resolve_devices([args.device], backends).devices
    spec = load_stage(args.stage)
    data_dir = ensure_data(args.data_dir, [spec.dataset])
    uri = resolve_tracking_uri(args.tracking_uri)
    tracker = Tracker(uri, args.experiment or DEFAULT_EXPERIMENT)
    options = parity_options(
        str(data_dir),
        args.threads or available_cores(),
        args.steps,
        args.dtype,
        spec,
        args.accumulate,
    )
    print(
        f"parity {args.stage}: training {', '.join(backends)} for {args.steps} "
        f"steps ({args.dtype}, accumulating in {args.accumulate}, {device}, seed {args.seed})",
        flush=True,
    )
    try:
        reports = run_parity(args.stage, device, args.seed, options, LocalExecutor(), backends)
    except KeyboardInterrupt:
        print("\ninterrupted: nothing recorded")
        return EXIT_INTERRUPTED
    for report in reports:
        print(report.describe())
        run_id = _record(tracker, report, args.steps)
        report_safely(tracker, run_id, command=command_line())
        pair = " vs ".join(report.losses)
        print(f"{pair}: recorded as run {run_id} (curve: parity_curve.csv, parity_curve.png)")
    return 0 if all(report.passed for report in reports) else EXIT_FAILED
