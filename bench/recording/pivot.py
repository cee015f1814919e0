"""The results at a glance: one row per stage, one column per backend (and device, where an
invocation ran on more than one), each cell the test accuracy over the seeds and the samples/s.
The same table opens the terminal's closing lines, the parent run's description and report.html.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from dataclasses import dataclass

from bench.core.types import CellRun
from bench.recording.stats import summarize
from bench.recording.tables import table as aligned

# A cell with no test accuracy to average: shown by what happened to it, never as a number.
_NOT_MEASURED = ("diverged", "failed", "unfinished")

CAPTION = (
    "Each entry: test accuracy, mean ± std over the n seeds that finished (n = 1: that seed's),"
    " then train samples per second (/s), mean over the seeds that measured it (-/s where none"
    " did: it needs 2 epochs, the first is warm-up)."
)


@dataclass(frozen=True)
class Entry:
    """What the table needs of one cell, from a run just made or read back from the store."""

    stage: str
    backend: str
    device: str
    outcome: str  # converged, did-not-learn, diverged, failed, unfinished
    test_accuracy: float | None
    samples_per_s: float | None
    diverged_step: int | None = None


@dataclass(frozen=True)
class Pivot:
    header: list[str]
    rows: list[list[str]]


def pivot(entries: list[Entry]) -> Pivot:
    """Stages as rows in the order they ran; backends (with the device where there are
    several) as columns in the order they ran."""
    several_devices = len({e.device for e in entries}) > 1

    def column(entry: Entry) -> str:
        return f"{entry.backend} {entry.device}" if several_devices else entry.backend

    columns = list(dict.fromkeys(map(column, entries)))
    groups: dict[tuple[str, str], list[Entry]] = {}
    for entry in entries:
        groups.setdefault((entry.stage, column(entry)), []).append(entry)
    stages = list(dict.fromkeys(e.stage for e in entries))
    rows = [
        [stage, *(_entry_text(groups.get((stage, name), [])) for name in columns)]
        for stage in stages
    ]
    return Pivot(["stage", *columns], rows)


def _entry_text(members: list[Entry]) -> str:
    if not members:
        return "-"
    measured = [m for m in members if m.outcome not in _NOT_MEASURED]
    others = [m for m in members if m.outcome != "converged"]
    if not measured:
        return _what_happened(others)
    accuracy = summarize([m.test_accuracy for m in measured if m.test_accuracy is not None])
    if accuracy is None:
        text = "no test accuracy"
    elif accuracy.n == 1:
        text = f"{100 * accuracy.mean:.2f}% (n=1)"
    else:
        text = f"{100 * accuracy.mean:.2f} ± {100 * accuracy.std:.2f}% (n={accuracy.n})"
    speed = summarize([m.samples_per_s for m in measured if m.samples_per_s is not None])
    text += f", {speed.mean:,.0f}/s" if speed is not None else ", -/s"
    if others:
        text += f"; {_what_happened(others)}"
    return text


def _what_happened(members: list[Entry]) -> str:
    """ "diverged at step 28", or "2 diverged, 1 failed" over several seeds."""
    if len(members) == 1:
        only = members[0]
        step = f" at step {only.diverged_step}" if only.diverged_step is not None else ""
        return f"{only.outcome}{step}"
    counts = Counter(member.outcome for member in members)  # in the order they first came
    return ", ".join(f"{n} {outcome}" for outcome, n in counts.items())


def entries_of_runs(runs: list[CellRun]) -> list[Entry]:
    """The cells of an invocation just run, as the terminal's table needs them."""
    entries = []
    for run in runs:
        cell, result = run.cell, run.result
        if result is None:
            entries.append(Entry(cell.stage, cell.backend, cell.device, "failed", None, None))
            continue
        entries.append(
            Entry(
                cell.stage,
                cell.backend,
                cell.device,
                result.outcome,
                result.test_accuracy,
                result.train_samples_per_s,
                result.diverged_step,
            )
        )
    return entries


def text_table(table: Pivot) -> str:
    """For the terminal: left-aligned columns under a rule, the caption below."""
    return f"{aligned(table.header, table.rows)}\n{textwrap.fill(CAPTION, 100)}"
