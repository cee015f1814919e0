"""Command line: `python -m bench list` and `python -m bench run`.

Every input is checked, and the tracking store opened, before any training starts; a user's
mistake prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn

from backends import BACKENDS, check_backend, installed_backends, is_installed
from bench.data import ensure_files, resolve_data_dir
from bench.devices import DEVICE_CHOICES, gpu_names, resolve_devices
from bench.errors import BenchError
from bench.matrix import LocalExecutor, run_matrix
from bench.report import Progress, results_table
from bench.runner import Cell, RunOptions, available_cores
from bench.spec import STAGE_NAMES, StageSpec, load_stage, with_epochs

EXIT_USAGE = 2
EXIT_CELL_FAILED = 1
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake on one line, without the usage block."""

    def error(self, message: str) -> NoReturn:
        raise BenchError(f"{message}; see `python -m bench {self.prog.split()[-1]} --help`")


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("0 is not allowed; give at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bench", description="mlp-bench: the MNIST tutorial stages, benchmarked")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands.add_parser("list", help="show stages, backends and devices")
    run = commands.add_parser("run", help="run the matrix of cells and record it to MLflow")
    run.add_argument("--stage", action="append", choices=STAGE_NAMES, help="default: all")
    run.add_argument("--backend", action="append", help="default: all installed")
    run.add_argument("--device", action="append", choices=DEVICE_CHOICES, help="default: auto")
    run.add_argument("--seed", action="append", type=_non_negative_int, help="default: 0")
    run.add_argument("--epochs", type=_positive_int, help="override the stage files' epochs")
    run.add_argument("--threads", type=_positive_int, help="default: the cores available")
    run.add_argument("--data-dir", help="folder of the MNIST .gz files (or MLP_BENCH_DATA_DIR)")
    run.add_argument("--tracking-uri", help="MLflow store (or MLFLOW_TRACKING_URI)")
    run.add_argument("--experiment", default=None, help="MLflow experiment name")
    return parser


def cmd_list() -> int:
    print("stages:")
    for name in STAGE_NAMES:
        spec = load_stage(name)
        print(f"  {name:<12} {spec.description} (tutorial: {spec.expected.tutorial_reported})")
    print("backends:")
    for name in BACKENDS:
        print(f"  {name:<12} {'installed' if is_installed(name) else 'not installed'}")
    print("devices:")
    print("  cpu          always")
    for gpu in gpu_names():
        print(f"  gpu          {gpu}")
    return 0


@dataclass(frozen=True)
class Plan:
    """A validated `run` invocation: everything known before any training starts."""

    cells: list[Cell]
    specs: dict[str, StageSpec]
    options: RunOptions
    tracking_uri: str
    experiment: str


def plan_run(args: argparse.Namespace) -> Plan:
    from bench.tracking import DEFAULT_EXPERIMENT, resolve_tracking_uri

    stages = list(dict.fromkeys(args.stage or STAGE_NAMES))
    specs = {name: with_epochs(load_stage(name), args.epochs) for name in stages}
    backends = list(dict.fromkeys(args.backend or installed_backends()))
    if not backends:
        raise BenchError("no backend installed; install tensorflow or torch (nox -s bench does)")
    for name in backends:
        check_backend(name)
    devices = resolve_devices(args.device or ["auto"])
    seeds = list(dict.fromkeys(args.seed or [0]))
    data_dir = resolve_data_dir(args.data_dir)
    ensure_files(data_dir)  # downloads what is missing, or fails now with the file's name
    from bench.matrix import build_cells

    options = RunOptions(
        data_dir=str(data_dir), threads=args.threads or available_cores(), epochs=args.epochs
    )
    return Plan(
        cells=build_cells(stages, backends, devices, seeds),
        specs=specs,
        options=options,
        tracking_uri=resolve_tracking_uri(args.tracking_uri),
        experiment=args.experiment or DEFAULT_EXPERIMENT,
    )


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def cmd_run(args: argparse.Namespace) -> int:
    from bench.tracking import MatrixRecord, Tracker

    plan = plan_run(args)
    tracker = Tracker(plan.tracking_uri, plan.experiment)
    parent_id = tracker.start_parent(
        f"matrix-{time.strftime('%Y%m%d-%H%M%S')}",
        params={
            "stages": ",".join(plan.specs),
            "cells": str(len(plan.cells)),
            "epochs": str(args.epochs or "stage file"),
            "threads": str(plan.options.threads),
            "data_dir": plan.options.data_dir,
            "command": " ".join(sys.argv[1:])[:500],
        },
        tags={"kind": "matrix"},
    )
    signal.signal(signal.SIGTERM, _raise_interrupt)  # a kill from outside ends runs KILLED
    print(
        f"{len(plan.cells)} cells -> {plan.tracking_uri} (experiment {plan.experiment!r})",
        flush=True,
    )
    try:
        runs = run_matrix(
            plan.cells,
            plan.options,
            LocalExecutor(),
            MatrixRecord(tracker, parent_id, plan.specs),
            Progress(),
            epochs_of=lambda cell: plan.specs[cell.stage].training.epochs,
        )
    except KeyboardInterrupt:
        tracker.end(parent_id, "KILLED")
        print("\ninterrupted: the runs so far are recorded; the interrupted one is KILLED")
        return EXIT_INTERRUPTED
    except BaseException:
        tracker.end(parent_id, "FAILED")
        raise
    failed = sum(run.result is None for run in runs)
    tracker.log_metrics(parent_id, {"cells": len(runs), "cells_failed": failed})
    tracker.end(parent_id, "FAILED" if failed else "FINISHED")
    print()
    print(results_table(runs, plan.specs))
    print(
        f"\nrecorded as parent run {parent_id}; browse with: mlflow ui --backend-store-uri "
        f"{plan.tracking_uri}"
    )
    return EXIT_CELL_FAILED if failed else 0


def _show_progress_logs() -> None:
    """The harness's own log lines (downloads, mirrors tried) go to stdout as plain lines, so
    that stderr carries only the one-line error when there is one."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("bench")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    _show_progress_logs()
    try:
        args = build_parser().parse_args(argv)
        if args.command == "list":
            return cmd_list()
        return cmd_run(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
