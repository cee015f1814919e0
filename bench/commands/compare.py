"""`python -m bench compare BASELINE [CANDIDATE]`: read two invocations from the store, judge
them (bench.recording.verdict), print the verdict and record it as a run of kind `comparison`.

Exit 0: no regression; 1: a regression; 3: inconclusive; 2: bad input, nothing recorded.
"""

from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

from bench.commands.arguments import add_tracking_uri, fraction
from bench.core.datasets import get_dataset
from bench.core.errors import BenchError
from bench.core.options import normalised
from bench.core.provenance import git_state
from bench.core.types import environment_of
from bench.recording import verdict as compare
from bench.recording.links import run_url, ui_command
from bench.recording.reader import (
    INVOCATION_TAG,
    NOTE_TAG,
    PAIRABLE_KINDS,
    Reader,
    RecordedCell,
    RecordedRun,
)
from bench.recording.run_report import command_line, report_safely
from bench.recording.store import redacted
from bench.recording.tracking import Tracker, resolve_tracking_uri
from bench.recording.user_tags import parse_tag
from bench.recording.verdict_text import csv_text, report_text

NAME = "compare"
HELP = "judge a candidate invocation against a baseline (exit 0, 1 or 3)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("baseline", help="a parent run id, or tag:KEY=VALUE (the newest so tagged)")
    parser.add_argument(
        "candidate", nargs="?", help="as the baseline; default: the newest invocation in the store"
    )
    add_judging_arguments(parser)
    add_tracking_uri(parser)


def points(text: str) -> float:
    """An argparse type: accuracy points, above 0 and below 100 (fraction's checks, scaled)."""
    try:
        fraction(str(float(text) / 100))
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 100 points") from None
    return float(text)


def add_judging_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the verdict (settings_of reads them): compare's, and any command's that
    ends in the compare gate."""
    parser.add_argument(
        "--alpha",
        type=fraction,
        default=0.01,
        help="significance level of the speed and accuracy tests; default 0.01",
    )
    parser.add_argument(
        "--max-slowdown",
        type=fraction,
        default=0.05,
        help="a significant slowdown beyond this fraction is a regression; default 0.05",
    )
    parser.add_argument(
        "--run-noise",
        type=fraction,
        default=0.30,
        help="how far one process's speed may move with nothing changed; with fewer than 5"
        " processes (seeds) a side a slowdown within it is inconclusive; default 0.30",
    )
    parser.add_argument(
        "--allow-busy",
        action="store_true",
        help="judge speed even where a run was flagged speed_stable false (the flags are listed)",
    )
    parser.add_argument(
        "--equivalence-margin",
        type=points,
        default=compare.DEFAULT_EQUIVALENCE_MARGIN,
        metavar="PP",
        help="mean test accuracies within this many points are equivalent (TOST over seeds);"
        f" default {compare.DEFAULT_EQUIVALENCE_MARGIN:g}",
    )


def settings_of(
    args: argparse.Namespace, expected_software: frozenset[str] = frozenset()
) -> compare.Settings:
    """The verdict's settings from add_judging_arguments' options."""
    return compare.Settings(
        alpha=args.alpha,
        max_slowdown=args.max_slowdown,
        allow_busy=args.allow_busy,
        run_noise=args.run_noise,
        equivalence_margin=args.equivalence_margin,
        expected_software=expected_software,
    )


TAG_SIDE = re.compile(r"^tag:([^=]+)=(.*)$")
# The stage file's params (bench.core.spec flat()): what was trained, apart from options and env.
SPEC_SECTIONS = frozenset({"name", "model", "init", "optimizer", "loss", "training", "data"})


def _newest_parent(reader: Reader, extra: str = "") -> RecordedRun | None:
    """The newest run or perf invocation (with `extra`, a further condition) in the store."""
    experiments = list(reader.experiments())
    found = []
    for kind in PAIRABLE_KINDS:  # MLflow's search has no OR and no IN for tags: one per kind
        query = f"tags.kind = '{kind}'" + (f" and {extra}" if extra else "")
        newest = reader.newest(experiments, query)
        found += [newest] if newest is not None else []
    return max(found, key=lambda run: run.start_time, default=None)


def resolve_run(reader: Reader, side: str, uri: str) -> RecordedRun:
    """A side given as a parent run id or `tag:KEY=VALUE` (the newest parent with that tag)."""
    tagged = TAG_SIDE.match(side)
    if tagged:
        try:  # the rules of `bench run --tag`, which also keep the search string well formed
            key, value = parse_tag(side.removeprefix("tag:"))
        except argparse.ArgumentTypeError as exc:
            raise BenchError(f"{side!r}: {exc}") from None
        run = _newest_parent(reader, f"tags.`{key}` = '{value}'")
        if run is None:
            raise BenchError(
                f"no run or perf invocation in {uri} has tag {key}={value}; set one with"
                f" `bench run --tag {key}={value}`, or give a parent run id"
            )
        return run
    run = reader.run(
        side,
        f"no run {side!r} in {uri}; give a parent run id (the `recorded as parent run`"
        " line) or tag:KEY=VALUE, and the store it is in with --tracking-uri",
    )
    kind = run.kind
    if kind not in PAIRABLE_KINDS:
        parent = run.tags.get(INVOCATION_TAG)
        hint = f" {parent}" if parent else ""
        raise BenchError(
            f"run {side} is a {kind or 'non-bench'} run, not a run or perf invocation; give its"
            f" invocation's parent run id{hint}"
        )
    return run


def _judged(recorded: RecordedCell) -> compare.JudgedCell:
    """A recorded cell as the comparison judges it: its key, rates and fingerprint."""
    tags, params = recorded.tags, normalised(recorded.params)
    cell = recorded.cell
    key: compare.CellKey = (cell.stage, cell.backend, cell.device, cell.seed)
    history = recorded.histories["epoch_seconds"]
    batch = int(params.get("training.batch_size", "100"))
    train_examples = get_dataset(params.get("data.dataset", "mnist")).split.train.size
    accuracy = recorded.metrics.get("test_accuracy")
    spec = {k: v for k, v in params.items() if k.split(".")[0] in SPEC_SECTIONS}
    environment = environment_of(params)
    return compare.JudgedCell(
        key=key,
        run_id=recorded.run_id,
        outcome=compare.cell_outcome(tags, recorded.status),
        test_accuracy=accuracy,
        rates=compare.steady_rates([value for _, value in history], batch, train_examples),
        step_losses=recorded.step_losses,
        fingerprint=compare.Fingerprint.of(environment, params),
        spec=spec,
        deterministic=params.get("option.nondeterministic") == "false",
        speed_stable=tags.get("speed_stable", "true") != "false",
        unstable_reason=tags.get("speed_unstable_reason", ""),
        inputs=compare.trained_inputs(environment, params),
    )


def load_side(reader: Reader, run: RecordedRun) -> compare.Side:
    """A parent run and its cells (a resumed invocation's: the later run of each cell)."""
    recorded = reader.cells(run, histories=("epoch_seconds",), losses=True)
    loaded = [_judged(cell) for cell in recorded]
    drift = {
        k.removeprefix("peak_drift_"): v
        for k, v in run.metrics.items()
        if k.startswith("peak_drift_")
    }
    return compare.Side(
        run_id=run.run_id,
        name=run.name,
        experiment_id=run.experiment_id,
        options={k: v for k, v in normalised(run.params).items() if k.startswith("option.")},
        cells={cell.key: cell for cell in sorted(loaded, key=lambda c: c.key)},
        speed_stable=run.tags.get("speed_stable", "true") != "false",
        peak_drift=drift,
        status=run.status,
        kind=run.tags.get("kind", "matrix"),
    )


def _still_running(run: RecordedRun) -> str:
    """That a parent run is still open, and by which process."""
    tags = run.tags
    owner = tags.get("owner_pid")
    by = f" (pid {owner} on {tags.get('owner_host', 'an unknown host')})" if owner else ""
    return f"is still running{by}"


def check_finished(run: RecordedRun, role: str, given: str) -> None:
    """A side still training has no verdict yet: its open cells have no outcome."""
    if run.status != "RUNNING":
        return
    run_id = run.run_id
    named = f"run {run_id}" if given == run_id else f"{given}, run {run_id},"
    raise BenchError(
        f"{role} {named} {_still_running(run)}; wait for it to finish, or give another"
        f" {role.upper()}"
    )


def check_pairable(base: compare.Side, cand: compare.Side) -> None:
    """The bad inputs found once both sides are read: one line each, nothing recorded."""
    if base.run_id == cand.run_id:
        raise BenchError(f"baseline and candidate are the same run {base.run_id}; give two runs")
    if base.experiment_id != cand.experiment_id:
        raise BenchError(
            f"runs {base.run_id} and {cand.run_id} are in different experiments"
            f" ({base.experiment_id} and {cand.experiment_id}); compare runs of one experiment"
        )
    numeric = compare.numeric_option_mismatch(base, cand)
    if numeric:
        what = ", ".join(f"{k} {old} vs {new}" for k, (old, new) in numeric.items())
        raise BenchError(
            f"the runs compute different numbers ({what}); compare runs made with the same"
            " --dtype, --parity and --accumulate"
        )
    for side in (base, cand):
        if not side.cells:
            raise BenchError(f"run {side.run_id} has no cells; give a run that trained some")
    if not set(base.cells) & set(cand.cells):
        raise BenchError(
            f"runs {base.run_id} and {cand.run_id} have no cell in common (stage, backend,"
            " device and seed); compare runs of the same stages"
        )


def _plot(comparison: compare.Comparison, path: Path) -> None:
    """The ratios with their 95% CIs, one row per cell (over its epochs) and per group judged
    over processes, against 1 and the slowdown limit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        (compare.cell_name(p.key), p.speed)
        for p in comparison.pairs
        if p.speed is not None and not p.not_judged
    ]
    rows += [(f"{g.group} (processes)", g.speed) for g in comparison.groups]
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.45 * max(1, len(rows))))
    for row, (_, speed) in enumerate(rows):
        judged = speed.verdict == "regression" and not comparison.speed_unjudged
        color = "tab:red" if judged else "tab:blue"
        ax.errorbar(
            speed.ratio,
            row,
            xerr=[[speed.ratio - speed.ci_low], [speed.ci_high - speed.ratio]],
            fmt="o",
            color=color,
            capsize=3,
        )
    ax.axvline(1.0, color="black", linewidth=0.8)
    limit = 1.0 - comparison.settings.max_slowdown
    ax.axvline(limit, color="tab:red", linestyle="--", linewidth=0.8, label="slowdown limit")
    ax.set_yticks(range(len(rows)), [name for name, _ in rows])
    ax.set_xlabel("samples/s, candidate / baseline (median, bootstrap 95% CI)")
    base, cand = comparison.baseline.run_id[:8], comparison.candidate.run_id[:8]
    ax.set_title(f"{comparison.verdict}: candidate {cand} vs baseline {base}", fontsize="medium")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def record(
    tracker: Tracker,
    comparison: compare.Comparison,
    text: str,
    tags: dict[str, str] | None = None,
) -> str:
    """A run of kind `comparison` beside the two parents, with the table, CSV and plot; `tags`
    say more of what was compared (an upgrade's pins)."""
    tracker.experiment_id = comparison.baseline.experiment_id
    base, cand = comparison.baseline.run_id, comparison.candidate.run_id
    settings = comparison.settings
    run_id = tracker.start_parent(
        f"compare-{cand[:8]}-vs-{base[:8]}",
        params={
            "alpha": f"{settings.alpha:g}",
            "max_slowdown": f"{settings.max_slowdown:g}",
            "allow_busy": str(settings.allow_busy).lower(),
            "run_noise": f"{settings.run_noise:g}",
            "equivalence_margin": f"{settings.equivalence_margin:g}",
            "expected_software": ",".join(sorted(settings.expected_software)) or "-",
            # A param, as `run` records it, not a tag: a tag this long widened the run page's
            # tags panel and pushed the verdict tag out of the window.
            "command": redacted(command_line())[:500],
        },
        tags={  # in this order in the run page's tags panel: the verdict in its first row
            "kind": "comparison",
            "verdict": comparison.verdict,
            "exit_code": str(comparison.exit_code),
            "baseline": base,
            "candidate": cand,
            NOTE_TAG: f"```\n{text}\n```",
            **git_state(),  # of the harness that judged
            **(tags or {}),
        },
    )
    try:
        tracker.log_metrics(
            run_id,
            {
                "pairs": len(comparison.pairs),
                "regressions": len(comparison.regressions),
                "inconclusive_reasons": len(comparison.inconclusive),
            },
        )
        with tempfile.TemporaryDirectory(prefix="mlp-bench-compare-") as tmp:
            folder = Path(tmp)
            (folder / "compare.txt").write_text(text + "\n")
            (folder / "compare.csv").write_text(csv_text(comparison))
            _plot(comparison, folder / "compare.png")
            for name in ("compare.txt", "compare.csv", "compare.png"):
                tracker.log_artifact(run_id, folder / name)
    except BaseException:
        tracker.end(run_id, "FAILED")
        raise
    tracker.end(run_id, "FINISHED")
    return run_id


def run(args: argparse.Namespace) -> int:
    uri = resolve_tracking_uri(args.tracking_uri)
    tracker = Tracker(uri, None)
    reader = tracker.reader
    uri = tracker.shown_uri  # from here on only named in messages: without its password
    base_run = resolve_run(reader, args.baseline, uri)
    check_finished(base_run, "baseline", args.baseline)
    if args.candidate is None:
        cand_run = _newest_parent(reader)
        if cand_run is None or cand_run.run_id == base_run.run_id:
            raise BenchError(
                f"the newest invocation in {uri} is the baseline itself; give a CANDIDATE"
            )
        if cand_run.status == "RUNNING":
            raise BenchError(
                f"the newest invocation in {uri}, run {cand_run.run_id},"
                f" {_still_running(cand_run)}; wait for it to finish, or give a CANDIDATE"
            )
    else:
        cand_run = resolve_run(reader, args.candidate, uri)
        check_finished(cand_run, "candidate", args.candidate)
    comparison, _, run_id = judge(tracker, base_run.run_id, cand_run.run_id, settings_of(args))
    print("\n".join(closing_lines(tracker.shown_uri, comparison, run_id)))
    return comparison.exit_code


def judge(
    tracker: Tracker,
    base_run_id: str,
    cand_run_id: str,
    settings: compare.Settings,
    echo: bool = True,
    heading: str = "",
    tags: dict[str, str] | None = None,
) -> tuple[compare.Comparison, str, str]:
    """Judge two finished parent runs of the tracker's store: read both sides, refuse what
    cannot be paired (BenchError, nothing recorded), make the verdict and its text, print it
    (with echo; at once, as recording takes seconds), record it with its report. Returns the
    comparison, its text and the comparison run's id. `heading` goes under the verdict line
    (what was compared, where the runs alone do not say it); `tags` on the comparison run."""
    reader = tracker.reader
    runs = (
        reader.run(run_id, f"no run {run_id!r} in {tracker.shown_uri}")
        for run_id in (base_run_id, cand_run_id)
    )
    baseline, candidate = (load_side(reader, run) for run in runs)
    check_pairable(baseline, candidate)
    comparison = compare.compare(baseline, candidate, settings)
    text = report_text(comparison)
    if heading:  # under the verdict, which stays the first line
        verdict, _, rest = text.partition("\n")
        text = f"{verdict}\n{heading}\n{rest}"
    if echo:
        print(text, flush=True)
    run_id = record(tracker, comparison, text, tags)
    report_safely(tracker, run_id)
    return comparison, text, run_id


def closing_lines(uri: str, comparison: compare.Comparison, run_id: str) -> list[str]:
    """What compare says last, as every command does: the run it recorded, how to serve the
    UI, and the pages of the comparison and of both sides."""
    experiment = comparison.baseline.experiment_id
    lines = [f"recorded as comparison run {run_id}"]
    command = ui_command(uri)
    if command:
        lines.append(f"browse with: {command}")
    lines.append(f"  this comparison: {run_url(uri, experiment, run_id)}")
    for role, side in (("baseline", comparison.baseline), ("candidate", comparison.candidate)):
        lines.append(f"  its {role}: {run_url(uri, experiment, side.run_id)}")
    return lines
