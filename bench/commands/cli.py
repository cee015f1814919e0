"""Command line: `mlp-bench` (or `python -m bench`) `list | run | perf | parity | reproduce |
report | compare | bisect | ui | server | record-pending | gpu-check`.

Every input is checked, and the tracking store opened, before any training starts; a user's
mistake prints one line and exits 2. Each command lives in its own module (bench/commands/*.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn, Protocol

from bench.commands import (
    bisect,
    compare,
    envs,
    gpu_check,
    parity,
    perf,
    record_pending,
    report,
    reproduce,
    run,
    server,
    ui,
    upgrade,
)
from bench.commands import list as list_command
from bench.commands.exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE
from bench.core import interrupts
from bench.core.errors import BenchError, StoreUnwritable
from bench.core.program import PROGRAM


class Command(Protocol):
    """A command module: its name and help line, its arguments, and what it runs."""

    NAME: str
    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


# Every command, in the order `--help` lists them. A new command is its module and one entry.
COMMANDS: tuple[Command, ...] = (
    list_command,
    run,
    perf,
    parity,
    reproduce,
    report,
    compare,
    bisect,
    ui,
    server,
    record_pending,
    gpu_check,
    envs,
    upgrade,
)
BY_NAME: dict[str, Command] = {command.NAME: command for command in COMMANDS}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake on one line, without the usage block."""

    def error(self, message: str) -> NoReturn:
        raise BenchError(f"{message}; see `{self.prog} --help`")


def build_parser(prog: str = PROGRAM) -> argparse.ArgumentParser:
    """Every command's arguments; `prog` is how the user typed the command (`mlp-bench` or
    `python -m bench`), which the usage lines and the one-line errors repeat."""
    parser = _Parser(prog=prog, description="mlp-bench: the MNIST tutorial stages, benchmarked")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        command.add_arguments(subparsers.add_parser(command.NAME, help=command.HELP))
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
        return BY_NAME[args.command].run(args)
    except StoreUnwritable as exc:  # after training: what it could not record is kept on disk
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before any run was opened, or after all were ended
        print("\ninterrupted", flush=True)
        return EXIT_INTERRUPTED
