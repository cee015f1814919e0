"""`python -m bench run`: validate everything, then run the matrix and record it."""

from __future__ import annotations

import argparse

from bench.commands.arguments import MAX_THREADS, add_env, add_matrix, int_in
from bench.commands.exits import EXIT_FAILED, EXIT_INTERRUPTED
from bench.commands.planning import plan_resume, plan_run
from bench.execution.invocation import execute, finish
from bench.execution.ray_executor import DEFAULT_RETRIES
from bench.recording.pivot import entries_of_runs, pivot, text_table
from bench.recording.tables import group_table, results_table

NAME = "run"
HELP = "run the matrix of cells and record it to MLflow"
MAX_RETRIES = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_matrix(parser)
    _add_executor(parser)
    add_env(parser)


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
        type=int_in(1, MAX_THREADS),
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
        type=int_in(0, MAX_RETRIES),
        default=DEFAULT_RETRIES,
        help=f"times a cell whose Ray node or worker died is run again (default"
        f" {DEFAULT_RETRIES}); a cell that fails on its own is not",
    )


def _defaults() -> dict[str, object]:
    """This command's arguments as they are when none is given: what --resume allows."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return vars(parser.parse_args([]))


def run(args: argparse.Namespace) -> int:
    plan = plan_resume(args, _defaults()) if args.resume else plan_run(args)
    execution = execute(plan, "matrix")
    if execution.interrupted:
        return EXIT_INTERRUPTED
    print()
    # The answer first (stage x backend), then each cell, then the groups of seeds.
    print(text_table(pivot(entries_of_runs(execution.runs))))
    print()
    print(results_table(execution.runs, plan.specs))
    if len(execution.runs) > len({run.cell.group for run in execution.runs}):
        print()
        print(group_table(execution.runs, plan.specs))
    return EXIT_FAILED if finish(execution, plan) else 0
