"""`mlp-bench upgrade --from PINS --to PINS`: did a package upgrade move accuracy or speed?

Both environments are made (or taken from the cache), the same cells run in each, interleaved,
as two invocations, and the compare gate judges the second against the first: per stage and
backend, step losses bit-identical, or accuracy equivalent within a margin, better or worse, and
the speed ratio with its confidence interval. Exit codes are compare's: 0 no regression,
1 a regression, 3 inconclusive, 2 bad input (nothing made, nothing recorded).
"""

from __future__ import annotations

import argparse
import dataclasses
import uuid

from bench.commands import compare
from bench.commands.arguments import PINS_HELP, add_matrix
from bench.commands.exits import EXIT_INTERRUPTED
from bench.commands.planning import backends_of, plan_run
from bench.core.errors import BenchError
from bench.core.program import PROGRAM
from bench.execution.environments import Environment, ensure, frameworks_of, parse_pins
from bench.execution.invocation import Plan, execute_interleaved, finish
from bench.recording.tracking import Tracker

NAME = "upgrade"
HELP = "judge a package upgrade: the same cells in two environments, interleaved, one verdict"
DEFAULT_SEEDS = 5  # the equivalence test needs several seeds a side; 5 also lets speed be
# judged over processes at alpha 0.01
# Software recorded on each cell that an upgrade changes on purpose: listed, not held against it.
EXPECTED_SOFTWARE = frozenset({"framework_version", "numpy_version"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    help_text = PINS_HELP.format(program=PROGRAM)
    parser.add_argument(
        "--from", dest="before", metavar="PINS", required=True, help=f"the baseline: {help_text}"
    )
    parser.add_argument(
        "--to", dest="after", metavar="PINS", required=True, help=f"the candidate: {help_text}"
    )
    add_matrix(parser)
    compare.add_judging_arguments(parser)


def environments(args: argparse.Namespace) -> tuple[Environment, Environment]:
    """Both sides' pins checked, then both environments made (or found in the cache)."""
    before, after = parse_pins(args.before), parse_pins(args.after)
    old, new = frameworks_of(before), frameworks_of(after)
    if not old or not new:
        side = "--from" if not old else "--to"
        raise BenchError(
            f"{side} pins install no framework; pin tensorflow-cpu, torch or jax on both sides"
        )
    if old != new:
        raise BenchError(
            f"--from installs {', '.join(sorted(old))} but --to installs {', '.join(sorted(new))};"
            " an upgrade compares versions of the same frameworks"
        )
    backends_of(args, before)  # a --backend the pins do not install: said before any is made
    return ensure(before), ensure(after)


def plans(args: argparse.Namespace, before: Environment, after: Environment) -> list[Plan]:
    """One plan per side: the same cells, options and stage texts; its own environment."""
    if args.seeds is None and not args.seed:
        args = argparse.Namespace(**(vars(args) | {"seeds": DEFAULT_SEEDS}))
    base = plan_run(args, environment=before)
    session = uuid.uuid4().hex[:12]
    tags = {"upgrade": session, "upgrade_from": before.name, "upgrade_to": after.name}
    return [
        dataclasses.replace(base, tags={**base.tags, **tags, "upgrade_side": "from"}),
        dataclasses.replace(
            base, environment=after, tags={**base.tags, **tags, "upgrade_side": "to"}
        ),
    ]


def heading(before: Environment, after: Environment) -> str:
    """What the comparison is of, above its table: both sides' names and pins."""
    return "\n".join(
        [
            f"upgrade: {before.name} -> {after.name}",
            f"  from: {'; '.join(before.pins)}",
            f"  to:   {'; '.join(after.pins)}",
        ]
    )


def run(args: argparse.Namespace) -> int:
    before, after = environments(args)
    sides = plans(args, before, after)
    executions = execute_interleaved(sides, "matrix")
    if any(execution.interrupted for execution in executions):
        return EXIT_INTERRUPTED
    for execution, plan in zip(executions, sides, strict=True):
        finish(execution, plan)
    print()
    tracker = Tracker(sides[0].tracking_uri, None)
    settings = compare.settings_of(args, expected_software=EXPECTED_SOFTWARE)
    comparison, _, run_id = compare.judge(
        tracker,
        executions[0].parent_id,
        executions[1].parent_id,
        settings,
        heading=heading(before, after),
        tags={
            "upgrade_from_pins": "; ".join(before.pins),
            "upgrade_to_pins": "; ".join(after.pins),
        },
    )
    print("\n".join(compare.closing_lines(tracker.shown_uri, comparison, run_id)))
    return comparison.exit_code
