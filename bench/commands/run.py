"""`python -m bench run`: validate everything, then run the matrix and record it."""

from __future__ import annotations

import argparse

from bench.commands.exits import EXIT_FAILED, EXIT_INTERRUPTED
from bench.commands.planning import plan_resume, plan_run
from bench.execution.invocation import execute, finish
from bench.recording.pivot import entries_of_runs, pivot, text_table
from bench.recording.tables import group_table, results_table


def cmd_run(args: argparse.Namespace) -> int:
    plan = plan_resume(args) if args.resume else plan_run(args)
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
