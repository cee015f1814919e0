"""Command line: `python -m bench list | run | parity | reproduce`.

Every input is checked, and the tracking store opened, before any training starts; a user's
mistake prints one line and exits 2. Each command lives in its own module (bench/cmd_*.py).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import NoReturn

from bench.devices import DEVICE_CHOICES
from bench.errors import BenchError
from bench.spec import STAGE_NAMES

EXIT_USAGE = 2
EXIT_FAILED = 1  # a cell crashed, a parity check failed, a reproduction differs
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


def _add_common(parser: argparse.ArgumentParser) -> None:
    """Options every training command shares."""
    parser.add_argument("--threads", type=_positive_int, help="default: the cores available")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument(
        "--accumulate",
        choices=("float64", "native"),
        default="float64",
        help="parity mode: compute products, sums and the loss in float64, rounding once to "
        "the dtype (default), or in the frameworks' native float32 kernels",
    )
    parser.add_argument("--data-dir", help="folder of the MNIST .gz files (or MLP_BENCH_DATA_DIR)")
    parser.add_argument("--tracking-uri", help="MLflow store (or MLFLOW_TRACKING_URI)")
    parser.add_argument("--experiment", help="MLflow experiment (default mnist-tutorial)")


def _add_matrix(parser: argparse.ArgumentParser) -> None:
    """Options of the commands that run a matrix of cells (run, perf)."""
    parser.add_argument("--stage", action="append", choices=STAGE_NAMES, help="default: all")
    parser.add_argument("--backend", action="append", help="default: all installed")
    parser.add_argument("--device", action="append", choices=DEVICE_CHOICES, help="default: auto")
    parser.add_argument("--seed", action="append", type=_non_negative_int, help="default: 0")
    parser.add_argument("--seeds", type=_positive_int, help="seeds 0..K-1 (with --seed: both)")
    parser.add_argument("--epochs", type=_positive_int, help="override the stage files' epochs")
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
        "--inter-op-threads",
        type=_positive_int,
        default=1,
        help="framework inter-op threads; default 1 (the model is a chain of ops)",
    )
    parser.add_argument(
        "--no-xla", action="store_true", help="TensorFlow: plain graph instead of XLA"
    )
    parser.add_argument(
        "--no-peak", action="store_true", help="skip the peak matmul measurement (no roofline)"
    )
    _add_common(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bench", description="mlp-bench: the MNIST tutorial stages, benchmarked")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands.add_parser("list", help="show stages, backends and devices")

    run = commands.add_parser("run", help="run the matrix of cells and record it to MLflow")
    perf = commands.add_parser("perf", help="throughput vs the peak and vs Keras model.fit")
    for matrix_parser in (run, perf):
        _add_matrix(matrix_parser)
    perf.add_argument(
        "--keras-epochs",
        type=_non_negative_int,
        default=4,
        help="epochs of the Keras model.fit reference (0: skip it); default 4",
    )

    parity = commands.add_parser("parity", help="train both backends in parity mode; compare")
    parity.add_argument("--stage", required=True, choices=STAGE_NAMES)
    parity.add_argument("--steps", type=_positive_int, default=550, help="default: 550 (1 epoch)")
    parity.add_argument("--device", choices=DEVICE_CHOICES, default="cpu")
    parity.add_argument("--seed", type=_non_negative_int, default=0)
    _add_common(parity)

    reproduce = commands.add_parser("reproduce", help="rerun a recorded cell and compare")
    reproduce.add_argument("run_id", help="the MLflow run id of a cell")
    reproduce.add_argument("--data-dir", help="folder of the MNIST .gz files")
    reproduce.add_argument("--tracking-uri", help="MLflow store (or MLFLOW_TRACKING_URI)")
    return parser


def raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: unwind like Ctrl-C, so open runs are ended KILLED."""
    raise KeyboardInterrupt(f"signal {signum}")


def catch_sigterm() -> None:
    signal.signal(signal.SIGTERM, raise_interrupt)


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
            from bench.cmd_list import cmd_list

            return cmd_list()
        if args.command == "run":
            from bench.cmd_run import cmd_run

            return cmd_run(args)
        if args.command == "perf":
            from bench.cmd_perf import cmd_perf

            return cmd_perf(args)
        if args.command == "parity":
            from bench.cmd_parity import cmd_parity

            return cmd_parity(args)
        from bench.cmd_reproduce import cmd_reproduce

        return cmd_reproduce(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
