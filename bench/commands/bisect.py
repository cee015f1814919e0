"""`python -m bench bisect GOOD BAD`: the first commit between GOOD and BAD whose probe the
compare gate judges a regression against GOOD's, by binary search (asv's `find`).

Each probe is a `bench run` of the commit's own harness in a worktree of its own
(bench.execution.bisect), recorded in the store with the tags bisect=<session> and
commit=<sha>; the gate judges it against GOOD's probe and records the comparison.

Exit 1: a first bad commit was found (a script gating on the range fails); 0: BAD shows no
regression against GOOD; 3: still inconclusive at --max-seeds, or where more seeds cannot help
(the range left is named); 2: bad input, nothing probed.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench.commands import compare as gate
from bench.commands.arguments import (
    MAX_SEEDS,
    add_cell_choice,
    add_data_dir,
    add_env,
    add_tracking_uri,
    int_in,
)
from bench.core.errors import BenchError
from bench.execution.bisect import Commit, History, ProbeSettings, history, run_probe
from bench.execution.environments import ensure, parse_pins
from bench.recording import store
from bench.recording import verdict as compare
from bench.recording.reader import RecordedRun
from bench.recording.tracking import DEFAULT_EXPERIMENT, Tracker, resolve_tracking_uri

NAME = "bisect"
HELP = "find the first commit between GOOD and BAD that the compare gate judges a regression"
DEFAULT_MAX_SEEDS = 8
# What a regression line of the gate is about: its first word (bench.recording.verdict).
ASPECTS = ("accuracy", "speed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("good", help="a commit without the regression (sha, branch, tag)")
    parser.add_argument("bad", help="a later commit with it; GOOD must be its ancestor")
    parser.add_argument(
        "--repo", type=Path, default=Path("."), help="the git checkout; default: this folder's"
    )
    add_cell_choice(parser)
    parser.add_argument(
        "--seeds", type=int_in(1, MAX_SEEDS), default=1, help="seeds a probe runs; default 1"
    )
    parser.add_argument(
        "--max-seeds",
        type=int_in(1, MAX_SEEDS),
        default=DEFAULT_MAX_SEEDS,
        help="an inconclusive verdict reruns both sides with twice the seeds, up to this;"
        f" default {DEFAULT_MAX_SEEDS}",
    )
    add_data_dir(parser)
    add_env(parser)
    add_tracking_uri(parser)


@dataclass(frozen=True)
class Probe:
    """One commit's invocation at a number of seeds, and its parent run."""

    commit: Commit
    seeds: int
    run: RecordedRun


@dataclass(frozen=True)
class Judged:
    """The gate's verdict on a probe against GOOD's, as the bisect reads it."""

    bad: bool | None  # None: inconclusive for what is hunted
    reason: str
    comparison: compare.Comparison
    text: str
    run_id: str


@dataclass
class Session:
    """A bisect under way: its store, its probes so far and GOOD's at each number of seeds."""

    tracker: Tracker
    settings: ProbeSettings
    found: History
    tmp: Path
    seeds: int
    max_seeds: int
    hunted: tuple[str, ...] = ASPECTS
    baselines: dict[int, Probe] = field(default_factory=dict)
    probes: list[str] = field(default_factory=list)  # the lines printed, one per probe
    used: set[str] = field(default_factory=set)  # the parent runs of the probes so far


def _absolute_uri(uri: str) -> str:
    """A SQLite store's path made absolute: each probe runs in a worktree folder of its own."""
    database = store.sqlite_path(uri)
    if database is None or database.is_absolute():
        return uri
    return f"sqlite:///{database.resolve()}" + (f"?{uri.split('?', 1)[1]}" if "?" in uri else "")


def _probe(session: Session, at: Commit, seeds: int) -> Probe:
    """Run the commit's invocation and find its parent run in the store by its tags."""
    settings = session.settings
    done = run_probe(settings, session.found.repo, at, seeds, session.tmp)
    reader = session.tracker.reader
    query = (
        f"tags.kind = 'matrix' and tags.`bisect` = '{settings.session}'"
        f" and tags.`commit` = '{at.sha}'"
    )
    run = reader.newest(list(reader.experiments()), query)
    if run is None or run.run_id in session.used:  # the newest is an earlier probe's
        tail = done.output_tail.splitlines()[-1:] or ["no output"]
        raise BenchError(
            f"the probe of {at} recorded no run (exit {done.returncode}: {tail[0].strip()});"
            " fix that commit's run, or bisect a range where it runs"
        )
    session.used.add(run.run_id)
    return Probe(at, seeds, run)


def _baseline(session: Session, seeds: int) -> Probe:
    """GOOD's probe at this number of seeds, run once."""
    if seeds not in session.baselines:
        good = session.found.good
        session.baselines[seeds] = _probe(session, good, seeds)
        print(f"GOOD {good}: {seeds} seed(s), run {session.baselines[seeds].run.run_id}")
    return session.baselines[seeds]


def gate_verdict(
    tracker: Tracker, base: RecordedRun, cand: RecordedRun
) -> tuple[compare.Comparison, str, str]:
    """The compare gate, as `bench compare BASE CAND` runs it with its defaults: the
    comparison, its text and the comparison run it recorded."""
    return gate.judge(tracker, base.run_id, cand.run_id, compare.Settings(), echo=False)


def _accuracy_decided(comparison: compare.Comparison) -> bool:
    """Every cell paired and judged, on both sides' finished runs, and its accuracy found the
    same bits, equivalent or better: the accuracy verdict stands whatever the speed's."""
    sides = (comparison.baseline, comparison.candidate)
    return (
        all(side.status == "FINISHED" for side in sides)
        and not comparison.unpaired_base
        and not comparison.unpaired_cand
        and all(not pair.not_judged for pair in comparison.pairs)
        and all(a.verdict == "ok" for a in comparison.accuracy)
    )


def read_verdict(
    comparison: compare.Comparison, hunted: tuple[str, ...]
) -> tuple[bool | None, str]:
    """Bad, good or inconclusive (None) for the regression hunted, and why. Hunting an
    accuracy regression alone, a decided accuracy verdict stands where the speed's is
    inconclusive (one epoch has no throughput sample after the first)."""
    found = [line for line in comparison.regressions if line.split(" ", 1)[0] in hunted]
    if found:
        return True, found[0].split(": ", 1)[-1]
    if comparison.exit_code == compare.EXIT_OK:
        return False, "no regression"
    if hunted == ("accuracy",) and _accuracy_decided(comparison):
        return False, "no accuracy regression: " + "; ".join(a.detail for a in comparison.accuracy)
    # The samples missing first: what more seeds or epochs would settle; the rest are counted.
    reasons = comparison.too_few + [
        r for r in comparison.inconclusive if r not in comparison.too_few
    ]
    more = f" (and {len(reasons) - 1} more reason(s))" if len(reasons) > 1 else ""
    return None, (reasons[0] if reasons else "inconclusive") + more


def seeds_can_help(comparison: compare.Comparison) -> bool:
    """Whether more seeds may decide an inconclusive verdict: not where no cell has a
    throughput sample (one epoch: only its first, which is warm-up), whatever the seeds."""
    return any(pair.speed is not None for pair in comparison.pairs)


def _judged(session: Session, at: Commit) -> Judged:
    """The probe of `at` judged against GOOD's; an inconclusive one is run again, both sides
    with twice the seeds, up to --max-seeds."""
    while True:
        seeds = session.seeds
        base = _baseline(session, seeds)
        cand = _probe(session, at, seeds)
        comparison, text, run_id = gate_verdict(session.tracker, base.run, cand.run)
        bad, reason = read_verdict(comparison, session.hunted)
        if bad is not None or seeds * 2 > session.max_seeds or not seeds_can_help(comparison):
            return Judged(bad, reason, comparison, text, run_id)
        print(f"  {at.short} inconclusive at {seeds} seed(s) ({reason}); again with {seeds * 2}")
        session.seeds = seeds * 2


def _show(session: Session, at: Commit, judged: Judged) -> None:
    word = {True: "regression", False: "good", None: "inconclusive"}[judged.bad]
    line = f"probe {len(session.probes) + 1}: {at} -> {word}: {judged.reason}"
    session.probes.append(line)
    print(line, flush=True)


def _hunted(comparison: compare.Comparison) -> tuple[str, ...]:
    """The aspects of BAD's regression: what the later probes are judged on."""
    aspects = {line.split(" ", 1)[0] for line in comparison.regressions}
    return tuple(a for a in ASPECTS if a in aspects) or ASPECTS


def _closing(session: Session, first: Commit, judged: Judged) -> list[str]:
    probed = len(session.probes)
    return [
        f"first bad commit: {first.sha} {first.subject}",
        f"{probed} probe(s) of {len(session.found.candidates)} commit(s), plus GOOD's;"
        f" {session.seeds} seed(s) a probe at the end",
        *gate.closing_lines(session.tracker.shown_uri, judged.comparison, judged.run_id),
    ]


def bisect(session: Session) -> int:
    """BAD first, then halve the range until one commit is left."""
    candidates = session.found.candidates
    last = _judged(session, candidates[-1])
    _show(session, candidates[-1], last)
    if last.bad is False:
        print("BAD shows no regression against GOOD; nothing to bisect")
        return compare.EXIT_OK
    if last.bad is None:
        print(
            f"still inconclusive at {session.seeds} seed(s): is BAD a regression? bisect again"
            " with more --epochs (2+) or --max-seeds"
        )
        return compare.EXIT_INCONCLUSIVE
    session.hunted = _hunted(last.comparison)
    good, bad, verdicts = -1, len(candidates) - 1, {len(candidates) - 1: last}
    while bad - good > 1:
        middle = (good + bad) // 2
        judged = _judged(session, candidates[middle])
        _show(session, candidates[middle], judged)
        if judged.bad is None:
            left = f"{candidates[good + 1].short}..{candidates[bad].short}"
            print(
                f"still inconclusive at {session.seeds} seed(s); the first bad commit is in {left}"
            )
            return compare.EXIT_INCONCLUSIVE
        verdicts[middle] = judged
        good, bad = (good, middle) if judged.bad else (middle, bad)
    print("\n".join(_closing(session, candidates[bad], verdicts[bad])))
    return compare.EXIT_REGRESSION


def _settings(args: argparse.Namespace, uri: str, pins: tuple[str, ...] | None) -> ProbeSettings:
    return ProbeSettings(
        stages=tuple(args.stage or ()),
        backends=tuple(args.backend or ()),
        stage_files=tuple(Path(path).resolve() for path in args.stage_file or ()),
        epochs=args.epochs,
        tracking_uri=_absolute_uri(uri),
        data_dir=Path(args.data_dir).resolve() if args.data_dir else None,
        session=uuid.uuid4().hex[:12],
        # Made here, once, before any probe: every probe's cells run in it (its --env).
        env=",".join(ensure(pins).pins) if pins is not None else None,
    )


def run(args: argparse.Namespace) -> int:
    if args.seeds > args.max_seeds:
        raise BenchError(f"--seeds {args.seeds} is above --max-seeds {args.max_seeds}; raise it")
    uri = resolve_tracking_uri(args.tracking_uri)
    pins = parse_pins(args.env) if args.env is not None else None
    found = history(args.repo, args.good, args.bad)
    settings = _settings(args, uri, pins)
    tracker = Tracker(settings.tracking_uri, DEFAULT_EXPERIMENT)
    steps = math.ceil(math.log2(len(found.candidates))) if len(found.candidates) > 1 else 0
    print(
        f"bisecting {len(found.candidates)} commit(s) after GOOD {found.good.short} up to BAD"
        f" {found.bad.short}: BAD and about {steps} more probe(s); runs tagged"
        f" bisect={settings.session}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="mlp-bench-bisect-") as tmp:
        session = Session(tracker, settings, found, Path(tmp), args.seeds, args.max_seeds)
        return bisect(session)
