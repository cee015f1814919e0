"""Argument groups that several commands share (training, matrix, store), and the value types
that check numbers as they are parsed: a typo is an error here, not an overflow in a worker."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from bench.core.devices import DEVICE_CHOICES
from bench.core.program import PROGRAM
from bench.core.spec import MAX_EPOCHS
from bench.execution.matrix import CELL_TIMEOUT_BASE_S, CELL_TIMEOUT_PER_EPOCH_S, MAX_CELL_TIMEOUT_S
from bench.recording.user_tags import parse_tag

MAX_THREADS = 1024
MAX_SEED = 2**32 - 1
MAX_SEEDS = 10_000
TRACKING_URI_HELP = "MLflow store (or MLFLOW_TRACKING_URI)"


def int_in(low: int, high: int) -> Callable[[str], int]:
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


def fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{value:g} is not between 0 and 1")
    return value


def add_tracking_uri(parser: argparse.ArgumentParser, text: str = TRACKING_URI_HELP) -> None:
    """--tracking-uri: the store a command reads or writes."""
    parser.add_argument("--tracking-uri", help=text)


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options every training command shares (run, perf, parity)."""
    parser.add_argument(
        "--threads", type=int_in(1, MAX_THREADS), help="default: the cores available"
    )
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument(
        "--accumulate",
        choices=("float64", "native"),
        help="parity mode: compute products, sums and the loss in float64, rounding once to "
        "the dtype (default), or in the frameworks' native float32 kernels",
    )
    add_data_dir(parser)
    add_tracking_uri(parser)
    parser.add_argument("--experiment", help="MLflow experiment (default mnist-tutorial)")


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        help="folder of the stages' data set files, MNIST's .gz (or MLP_BENCH_DATA_DIR)",
    )


def add_cell_choice(parser: argparse.ArgumentParser) -> None:
    """--stage, --stage-file, --backend, --epochs: which cells. `bisect` takes these alone, as
    it hands them to each probed commit's own `run`, which may be older than the others."""
    parser.add_argument("--stage", action="append", help="default: every stage file's stage")
    parser.add_argument(
        "--stage-file", action="append", help="a stage file of your own (repeatable)"
    )
    parser.add_argument("--backend", action="append", help="default: all installed")
    parser.add_argument(
        "--epochs", type=int_in(1, MAX_EPOCHS), help="override the stage files' epochs"
    )


def add_matrix(parser: argparse.ArgumentParser) -> None:
    """Options of the commands that run a matrix of cells (run, perf)."""
    add_cell_choice(parser)
    parser.add_argument("--device", action="append", choices=DEVICE_CHOICES, help="default: auto")
    parser.add_argument("--seed", action="append", type=int_in(0, MAX_SEED), help="default: 0")
    parser.add_argument(
        "--seeds", type=int_in(1, MAX_SEEDS), help="seeds 0..K-1 (with --seed: both)"
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
        type=int_in(1, MAX_THREADS),
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
        type=int_in(1, MAX_CELL_TIMEOUT_S),
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
    add_common(parser)


PINS_HELP = (
    "requirement pins, comma-separated (e.g. tensorflow-cpu==2.20.0), or a requirements file;"
    " made once into a cached venv ({program} envs lists them)"
)


def add_env(parser: argparse.ArgumentParser) -> None:
    """--env: the environment (a cached venv of pinned packages) the cells run in."""
    parser.add_argument(
        "--env",
        metavar="PINS",
        help="run the cells in a venv of these pins instead of this one: "
        + PINS_HELP.format(program=PROGRAM),
    )
