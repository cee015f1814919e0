"""What a person sees: progress per cell while running, and the closing table."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TextIO

from bench.core.spec import StageSpec
from bench.core.types import Cell, CellLoad, CellRun, EpochRecord
from bench.recording.scoring import judged_met
from bench.recording.stats import outcome_counts, summarize


class Progress:
    """Prints a line per cell; on a terminal also an updating line per epoch."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self._stream = stream
        self._live = stream.isatty()

    def cell_started(self, index: int, total: int, cell: Cell) -> None:
        self._prefix = self.prefix(index, total, cell)
        if self._live:
            self._write(f"{self._prefix}  starting", end="")

    def prefix(self, index: int, total: int, cell: Cell) -> str:
        """What starts each of the cell's lines."""
        return f"[{index}/{total}] {cell.name}"

    def epoch(self, cell: Cell, record: EpochRecord, epochs: int) -> None:
        if self._live:
            self._write(
                f"\r{self._prefix}  epoch {record.epoch}/{epochs}  loss {record.train_loss:.4f}"
                f"  val {100 * record.val_accuracy:.2f}%  {record.epoch_seconds:.2f}s\033[K",
                end="",
            )

    def cell_finished(self, run: CellRun) -> None:
        if run.result is None:
            text = f"{self._prefix}  FAILED: {run.error} (full log: worker.log artifact)"
        else:
            r = run.result
            speed = f"{r.train_samples_per_s:,.0f} samples/s" if r.train_samples_per_s else "-"
            text = (
                f"{self._prefix}  {r.outcome}  test {100 * r.test_accuracy:.2f}%  {speed}"
                f"  {run.wall_seconds:.1f}s"
            )
        # On a terminal, overwrite the live epoch line and clear what is left of it.
        self._write(f"\r{text}\033[K" if self._live else text)

    def _write(self, text: str, end: str = "\n") -> None:
        self._stream.write(text + end)
        self._stream.flush()


def _format_row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


# A cell's row in every table of results: the closing table and the report's.
CELL_COLUMNS = [
    "stage",
    "backend",
    "device",
    "seed",
    "outcome",
    "test acc",
    "tutorial",
    "expected",
    "met",
]


def results_table(runs: list[CellRun], specs: dict[str, StageSpec]) -> str:
    """The closing table: each cell's outcome and test accuracy beside the tutorial's."""
    header = [*CELL_COLUMNS, "samples/s"]
    rows = []
    for run in runs:
        expected = specs[run.cell.stage].expected
        c = run.cell
        if run.result is None:
            rows.append(
                [
                    c.stage,
                    c.backend,
                    c.device,
                    str(c.seed),
                    "FAILED",
                    "-",
                    expected.tutorial,
                    expected.describe(),
                    "no",
                    "-",
                ]
            )
            continue
        r = run.result
        outcome = r.outcome + (f" at step {r.diverged_step}" if r.diverged_step else "")
        speed = f"{r.train_samples_per_s:,.0f}{speed_mark(run)}" if r.train_samples_per_s else "-"
        met = judged_met(specs[c.stage], r.outcome, r.test_accuracy)
        rows.append(
            [
                c.stage,
                c.backend,
                c.device,
                str(c.seed),
                outcome,
                f"{100 * r.test_accuracy:.2f}%",
                expected.tutorial,
                expected.describe(),
                met,
                speed,
            ]
        )
    return with_speed_note(table(header, rows), runs)


def speed_mark(run: CellRun) -> str:
    """A "!" after the samples/s of a cell whose speed is not to be trusted (see
    bench.execution.load_monitor)."""
    return "!" if run.load is not None and not run.load.stable else ""


def with_speed_note(
    text: str, runs: list[CellRun], others: Iterable[tuple[str, CellLoad | None]] = ()
) -> str:
    """A table and, under it, one line giving why each row marked "!" is marked: the cells',
    then `others` (name, load: perf's Keras references)."""
    loads = [(r.cell.name, r.load) for r in runs] + list(others)
    notes = [
        f"{name} {', '.join(load.unstable_reasons)}"
        for name, load in loads
        if load is not None and not load.stable
    ]
    return f"{text}\n! speed not stable: {'; '.join(notes)}" if notes else text


def _mean_std(values: list[float], scale: float, digits: int) -> str:
    summary = summarize(values)
    if summary is None:
        return "-"
    return f"{scale * summary.mean:,.{digits}f} ± {scale * summary.std:,.{digits}f}"


# A group's statistics in every table of them: the closing one and the report's.
GROUP_COLUMNS = [
    "stage",
    "backend",
    "device",
    "seeds",
    "outcomes",
    "test acc (mean ± std)",
    "95% CI",
]


def group_table(runs: list[CellRun], specs: dict[str, StageSpec]) -> str:
    """One row per stage x backend x device: mean ± std over its seeds, and the 95% CI."""
    header = [
        *GROUP_COLUMNS,
        "tutorial",
        "samples/s (mean ± std)",
    ]
    groups: dict[str, list[CellRun]] = {}
    for run in runs:
        groups.setdefault(run.cell.group, []).append(run)
    rows = []
    for members in groups.values():
        cell = members[0].cell
        results = [r.result for r in members if r.result is not None]
        accuracies = [r.test_accuracy for r in results]
        speeds = [r.train_samples_per_s for r in results if r.train_samples_per_s is not None]
        counts = outcome_counts(
            [r.outcome for r in results] + ["failed"] * (len(members) - len(results))
        )
        summary = summarize(accuracies)
        ci = f"[{100 * summary.ci95_low:.2f}, {100 * summary.ci95_high:.2f}]" if summary else "-"
        rows.append(
            [
                cell.stage,
                cell.backend,
                cell.device,
                str(len(members)),
                ", ".join(f"{n} {k}" for k, n in counts.items() if n),
                _mean_std(accuracies, 100, 2) + ("%" if accuracies else ""),
                ci,
                specs[cell.stage].expected.tutorial,
                _mean_std(speeds, 1, 0),
            ]
        )
    return table(header, rows)


def table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns under a header and a rule."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [_format_row(header, widths), _format_row(["-" * w for w in widths], widths)]
    lines += [_format_row(row, widths) for row in rows]
    return "\n".join(lines)
