"""Command line: `mlp-bench` (or `python -m bench`) `list | run | perf | parity | reproduce |
report | compare | ui | server | record-pending | gpu-check`.

Every input is checked, and the tracking store opened, before any training starts; a user's
mistake prints one line and exits 2. Each command lives in its own module (bench/commands/*.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from bench.commands import gpu_check
from bench.commands.exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE
from bench.core import interrupts
from bench.core.devices import DEVICE_CHOICES
from bench.core.errors import BenchError, StoreUnwritable
from bench.core.program import PROGRAM
from bench.core.spec import MAX_EPOCHS
from bench.execution.matrix import CELL_TIMEOUT_BASE_S, CELL_TIMEOUT_PER_EPOCH_S, MAX_CELL_TIMEOUT_S
from bench.execution.ray_executor import DEFAULT_RETRIES
from bench.recording.mlflow_server import DATABASE_ENV, DEFAULT_DATABASE, SERVER_PORT
from bench.recording.user_tags import parse_tag

# Ranges of the numeric options: a typo is an error here, not an overflow in a worker.
MAX_THREADS = 1024
MAX_SEED = 2**32 - 1
MAX_SEEDS = 10_000
MAX_PARITY_STEPS = 100_000
MAX_RETRIES = 10


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake on one line, without the usage block."""

    def error(self, message: str) -> NoReturn:
        raise BenchError(f"{message}; see `{self.prog} --help`")


def _int_in(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from `low` to `high`; the message names both."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}")
        return value

    return parse


def _keras_epochs(text: str) -> int:
    """--keras-epochs: 0 (no reference) or 2 and more, since the reference's speed is the
    median of the epochs after the first (the first compiles and warms up)."""
    value = _int_in(0, MAX_EPOCHS)(text)
    if value == 1:
        raise argparse.ArgumentTypeError(
            "1 leaves no epoch after the first, whose median is the reference's speed;"
            " give 2 or more, or 0 to skip the reference"
        )
    return value


def _fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{value:g} is not between 0 and 1")
    return value


def _add_common(parser: argparse.ArgumentParser) -> None:
    """Options every training command shares."""
    parser.add_argument(
        "--threads", type=_int_in(1, MAX_THREADS), help="default: the cores available"
    )
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument(
        "--accumulate",
        choices=("float64", "native"),
        help="parity mode: compute products, sums and the loss in float64, rounding once to "
        "the dtype (default), or in the frameworks' native float32 kernels",
    )
    parser.add_argument(
        "--data-dir",
        help="folder of the stages' data set files, MNIST's .gz (or MLP_BENCH_DATA_DIR)",
    )
    parser.add_argument("--tracking-uri", help="MLflow store (or MLFLOW_TRACKING_URI)")
    parser.add_argument("--experiment", help="MLflow experiment (default mnist-tutorial)")


def _add_matrix(parser: argparse.ArgumentParser) -> None:
    """Options of the commands that run a matrix of cells (run, perf)."""
    parser.add_argument("--stage", action="append", help="default: every stage file's stage")
    parser.add_argument(
        "--stage-file", action="append", help="a stage file of your own (repeatable)"
    )
    parser.add_argument("--backend", action="append", help="default: all installed")
    parser.add_argument("--device", action="append", choices=DEVICE_CHOICES, help="default: auto")
    parser.add_argument("--seed", action="append", type=_int_in(0, MAX_SEED), help="default: 0")
    parser.add_argument(
        "--seeds", type=_int_in(1, MAX_SEEDS), help="seeds 0..K-1 (with --seed: both)"
    )
    parser.add_argument(
        "--epochs", type=_int_in(1, MAX_EPOCHS), help="override the stage files' epochs"
    )
    parser.add_argument("--parity", action="store_true", help="dropout masks drawn by numpy")
    parser.add_argument(
        "--nondeterministic",
        action="store_true",
        help="leave framework op determinism off (to measure what determinism costs)",
    )
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls on GPUs")
    parser.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="PyTorch on a GPU: capture the training step in a CUDA graph and replay it",
    )
    parser.add_argument(
        "--torch-matmul",
        choices=["auto", "mkl", "onednn"],
        default="auto",
        help="PyTorch on a CPU: the products' library; auto (default) measures which is"
        " faster on this machine once and keeps the choice",
    )
    parser.add_argument(
        "--inter-op-threads",
        type=_int_in(1, MAX_THREADS),
        default=1,
        help="framework inter-op threads; default 1 (the model is a chain of ops)",
    )
    parser.add_argument(
        "--no-xla", action="store_true", help="TensorFlow: plain graph instead of XLA"
    )
    parser.add_argument(
        "--no-peak", action="store_true", help="skip the peak matmul measurement (no roofline)"
    )
    parser.add_argument(
        "--cell-timeout",
        type=_int_in(1, MAX_CELL_TIMEOUT_S),
        help="seconds a cell may run before it is killed and recorded FAILED; default "
        f"{CELL_TIMEOUT_BASE_S} + {CELL_TIMEOUT_PER_EPOCH_S} per epoch",
    )
    parser.add_argument(
        "--tag",
        action="append",
        type=parse_tag,
        metavar="KEY=VALUE",
        help="a label on the parent run (repeatable); `compare tag:KEY=VALUE` finds it",
    )
    _add_common(parser)


def _add_executor(parser: argparse.ArgumentParser) -> None:
    """Where `run` runs its cells: here, one at a time, or on a Ray cluster."""
    parser.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local (default): this machine, one cell at a time; ray: one Ray task per cell",
    )
    parser.add_argument(
        "--ray-address",
        help="auto or HOST:PORT or ray://HOST:PORT of a running cluster; default: a local Ray"
        " started for this invocation",
    )
    parser.add_argument(
        "--cpus-per-cell",
        type=_int_in(1, MAX_THREADS),
        help="CPUs each cell's Ray task asks for (and its threads); default: all the cores of"
        " the cluster's smallest node, so that no two cells share a node's cores",
    )
    parser.add_argument(
        "--resume",
        metavar="PARENT_RUN_ID",
        help="run the cells of that invocation that did not finish, under its parent run"
        " (its own stages and options)",
    )
    parser.add_argument(
        "--retries",
        type=_int_in(0, MAX_RETRIES),
        default=DEFAULT_RETRIES,
        help=f"times a cell whose Ray node or worker died is run again (default"
        f" {DEFAULT_RETRIES}); a cell that fails on its own is not",
    )


def build_parser(prog: str = PROGRAM) -> argparse.ArgumentParser:
    """Every command's arguments; `prog` is how the user typed the command (`mlp-bench` or
    `python -m bench`), which the usage lines and the one-line errors repeat."""
    parser = _Parser(prog=prog, description="mlp-bench: the MNIST tutorial stages, benchmarked")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands.add_parser("list", help="show stages, backends and devices")

    run = commands.add_parser("run", help="run the matrix of cells and record it to MLflow")
    perf = commands.add_parser("perf", help="throughput vs the peak and vs Keras model.fit")
    for matrix_parser in (run, perf):
        _add_matrix(matrix_parser)
    _add_executor(run)
    perf.add_argument(
        "--keras-epochs",
        type=_keras_epochs,
        default=4,
        help="epochs of the Keras model.fit reference on each framework's Keras backend"
        " (0: skip it; else 2 or more); default 4",
    )
    perf.add_argument(
        "--allow-busy",
        action="store_true",
        help="time even where other processes use the cores (the cells are flagged)",
    )

    parity = commands.add_parser(
        "parity", help="train every backend in parity mode; compare each pair step by step"
    )
    parity.add_argument("--stage", required=True)
    parity.add_argument(
        "--steps", type=_int_in(1, MAX_PARITY_STEPS), default=550, help="default: 550 (1 epoch)"
    )
    parity.add_argument(
        "--backend", action="append", help="two or more (repeatable); default: all installed"
    )
    parity.add_argument("--device", choices=DEVICE_CHOICES, default="cpu")
    parity.add_argument("--seed", type=_int_in(0, MAX_SEED), default=0)
    _add_common(parity)
    parity.set_defaults(accumulate="float64")  # run and perf: only with --parity

    reproduce = commands.add_parser("reproduce", help="rerun a recorded cell and compare")
    reproduce.add_argument("run_id", help="the MLflow run id of a cell")
    reproduce.add_argument("--data-dir", help="folder of the stage's data set files (MNIST's .gz)")
    reproduce.add_argument("--tracking-uri", help="MLflow store (or MLFLOW_TRACKING_URI)")

    report = commands.add_parser(
        "report", help="make an invocation's report (description, table, figures, html) again"
    )
    report.add_argument("run_id", help="the parent run id of a run, perf or parity invocation")
    report.add_argument(
        "--out",
        help="folder for the files; default reports/<run id> beside"
        " the store (results/reports/<run id>)",
    )
    report.add_argument("--tracking-uri", help="MLflow store (or MLFLOW_TRACKING_URI)")

    compare = commands.add_parser(
        "compare", help="judge a candidate invocation against a baseline (exit 0, 1 or 3)"
    )
    compare.add_argument(
        "baseline", help="a parent run id, or tag:KEY=VALUE (the newest so tagged)"
    )
    compare.add_argument(
        "candidate", nargs="?", help="as the baseline; default: the newest invocation in the store"
    )
    compare.add_argument(
        "--alpha",
        type=_fraction,
        default=0.01,
        help="significance level of the speed and accuracy tests; default 0.01",
    )
    compare.add_argument(
        "--max-slowdown",
        type=_fraction,
        default=0.05,
        help="a significant slowdown beyond this fraction is a regression; default 0.05",
    )
    compare.add_argument(
        "--run-noise",
        type=_fraction,
        default=0.30,
        help="how far one process's speed may move with nothing changed; with fewer than 5"
        " processes (seeds) a side a slowdown within it is inconclusive; default 0.30",
    )
    compare.add_argument(
        "--allow-busy",
        action="store_true",
        help="judge speed even where a run was flagged speed_stable false (the flags are listed)",
    )
    compare.add_argument("--tracking-uri", help="MLflow store (or MLFLOW_TRACKING_URI)")

    ui = commands.add_parser(
        "ui", help="serve a store's MLflow UI (a moved or copied results/ included)"
    )
    ui.add_argument("--port", type=_int_in(1, 65535), help="default 5000")
    ui.add_argument("--tracking-uri", help="a SQLite store (or MLFLOW_TRACKING_URI)")

    server = commands.add_parser(
        "server", help="a shared MLflow tracking server on PostgreSQL (nox -s server)"
    )
    server.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (this host only)")
    server.add_argument("--port", type=_int_in(1, 65535), default=SERVER_PORT)
    server.add_argument(
        "--database-uri",
        help=f"postgresql://USER:PASSWORD@HOST:PORT/DB (or {DATABASE_ENV}); default"
        f" {DEFAULT_DATABASE}",
    )
    server.add_argument("--artifacts", help="folder the server keeps artifacts in")
    server.add_argument(
        "--basic-auth",
        action="store_true",
        help="MLflow's basic-auth app: clients log in with MLFLOW_TRACKING_USERNAME/PASSWORD",
    )
    server.add_argument("--workers", type=_int_in(1, 64), default=4)

    pending = commands.add_parser(
        "record-pending", help="record the cells a locked or read-only store could not take"
    )
    pending.add_argument("folder", help="the folder the error named (.../unrecorded)")

    check = commands.add_parser(
        "gpu-check", help="check the GPU paths of each backend: speed, bitwise reruns, parity"
    )
    gpu_check.add_arguments(check)
    return parser


def _show_progress_logs() -> None:
    """The harness's own log lines (downloads, mirrors tried) go to stdout as plain lines, so
    that stderr carries only the one-line error when there is one."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("bench")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: Sequence[str] | None = None, prog: str = PROGRAM) -> int:
    """The `mlp-bench` console script (pyproject's [project.scripts]); `python -m bench` passes
    its own `prog`."""
    # MLflow 3 reports usage to an outside host unless told not to; every process started from
    # here (workers included) inherits the setting. A user's own setting wins.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    _show_progress_logs()
    interrupts.install()
    try:
        args = build_parser(prog).parse_args(argv)
        if args.command == "list":
            from bench.commands.list import cmd_list

            return cmd_list()
        if args.command == "run":
            from bench.commands.run import cmd_run

            return cmd_run(args)
        if args.command == "perf":
            from bench.commands.perf import cmd_perf

            return cmd_perf(args)
        if args.command == "parity":
            from bench.commands.parity import cmd_parity

            return cmd_parity(args)
        if args.command == "report":
            from bench.commands.report import cmd_report

            return cmd_report(args)
        if args.command == "compare":
            from bench.commands.compare import cmd_compare

            return cmd_compare(args)
        if args.command == "ui":
            from bench.commands.ui import cmd_ui

            return cmd_ui(args)
        if args.command == "server":
            from bench.commands.server import cmd_server

            return cmd_server(args)
        if args.command == "record-pending":
            from bench.commands.record_pending import cmd_record_pending

            return cmd_record_pending(args)
        if args.command == "gpu-check":
            return gpu_check.cmd_gpu_check(args)
        from bench.commands.reproduce import cmd_reproduce

        return cmd_reproduce(args)
    except StoreUnwritable as exc:  # after training: what it could not record is kept on disk
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before any run was opened, or after all were ended
        print("\ninterrupted", flush=True)
        return EXIT_INTERRUPTED
