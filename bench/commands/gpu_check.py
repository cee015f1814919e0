"""`mlp-bench gpu-check` and `python -m bench.gpu_check`: the GPU check's flags; the check
itself is bench.execution.gpu_survey."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.core.errors import BenchError
from bench.core.spec import STAGE_NAMES
from bench.execution import gpu_survey

NAME = "gpu-check"
HELP = "check the GPU paths of each backend: speed, bitwise reruns, parity"
DEFAULT_OUT = "results/gpu-check"


def _stages(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGE_NAMES]
    if unknown or not names:
        given = ", ".join(unknown) or "(none)"
        raise argparse.ArgumentTypeError(
            f"unknown stage(s) {given}; choose from {', '.join(STAGE_NAMES)}"
        )
    return [s for s in STAGE_NAMES if s in names]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The check's arguments, for `mlp-bench gpu-check` and `python -m bench.gpu_check`."""
    parser.add_argument(
        "--data-dir",
        help="the stages' data files (else MLP_BENCH_DATA_DIR, else the default folder;"
        " missing files are downloaded)",
    )
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help=f"folder for the table and JSON; default {DEFAULT_OUT}"
    )
    parser.add_argument("--epochs", type=int, default=10, help="epochs of each row; default 10")
    parser.add_argument(
        "--device",
        choices=("gpu", "cpu"),
        default="gpu",
        help="gpu (default); cpu rehearses the whole check where there is no GPU",
    )
    parser.add_argument(
        "--stages",
        type=_stages,
        default=list(STAGE_NAMES),
        help="comma-separated stages; default all",
    )
    parser.add_argument(
        "--backend", action="append", help="repeatable; default: every installed but tensorflow"
    )
    # Seven minutes fit two backends' most valuable items; they come first, so a shorter
    # budget still proves the most.
    parser.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="items that would start after this many seconds are listed as skipped; default 420",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_check", description=gpu_survey.__doc__
    )
    add_arguments(parser)
    return parser.parse_args(argv)


def settings(args: argparse.Namespace) -> gpu_survey.Settings:
    """The parsed flags as the check takes them."""
    return gpu_survey.Settings(
        out=Path(args.out),
        device=args.device,
        stages=args.stages,
        backends=args.backend,
        data_dir=args.data_dir,
        epochs=args.epochs,
        budget_s=args.budget_s,
    )


def run(args: argparse.Namespace) -> int:
    """Run the check, print its table; 0 when everything ran and held, else 1 (BenchError,
    bad input, propagates: the caller prints it in one line and exits 2)."""
    report = gpu_survey.Check(settings(args)).run()
    print("\n".join(report.lines()))
    return 0 if report.passed else 1


def main() -> None:
    try:
        code = run(parse_args())
    except BenchError as error:  # exit 2, as for bad arguments; 1 is a check that failed
        print(f"gpu_check: {error}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)


if __name__ == "__main__":
    main()
