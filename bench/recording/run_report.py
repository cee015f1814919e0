"""The report of an invocation, read back from the store: a Markdown description (the closing
table, command line, commit, machine, UI link), a table of its cells, figures per stage, and
one self-contained report.html. Made at the end of `run`, `perf` and `parity`, and again by
`mlp-bench report RUN_ID`.

Everything comes from what the store holds, not from the invocation's memory, so a report made
later from the store is the same report.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.core.program import PROGRAM
from bench.core.types import environment_of
from bench.recording import markdown, store
from bench.recording.links import cells_link, run_url, ui_command
from bench.recording.pivot import CAPTION, Entry, Pivot, pivot
from bench.recording.reader import NOTE_TAG, Invocation, RecordedCell
from bench.recording.scoring import recorded_met
from bench.recording.stats import Summary, summarize
from bench.recording.tables import CELL_COLUMNS, GROUP_COLUMNS
from bench.recording.tracking import Tracker


def default_report_dir(tracking_uri: str, run_id: str) -> Path:
    """reports/<run id> beside a SQLite store (results/reports/<run id> for the project's
    own), so that reports travel with the store; results/reports/<run id> for a server."""
    database = store.sqlite_path(tracking_uri)
    results = database.parent if database is not None else store.RESULTS_DIR
    return results / "reports" / run_id


# ---- the table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CellRow:
    """One row of the cells table, as numbers (the Markdown and HTML format them)."""

    stage: str
    backend: str
    device: str
    seed: int
    outcome: str
    test_accuracy: float | None
    tutorial: str
    tutorial_test_accuracy: float | None
    expectation: str
    met: str
    samples_per_s: float | None
    samples_per_s_p25: float | None
    samples_per_s_p75: float | None
    roofline_fraction: float | None
    attainable_fraction: float | None
    run_id: str


def cell_row(cell: RecordedCell) -> CellRow:
    expected = cell.expected
    tutorial = cell.metrics.get("tutorial_test_accuracy")
    if tutorial is None and expected is not None:
        tutorial = expected.tutorial_test_accuracy
    outcome = cell.outcome
    if "diverged_step" in cell.metrics:
        # "at", not "@": MLflow's Markdown takes "@step" for a link to a GitHub user.
        outcome += f" at step {int(cell.metrics['diverged_step'])}"
    m = cell.metrics
    return CellRow(
        stage=cell.stage,
        backend=cell.backend,
        device=cell.device,
        seed=cell.seed,
        outcome=outcome,
        test_accuracy=m.get("test_accuracy"),
        tutorial=expected.tutorial if expected is not None else "-",
        tutorial_test_accuracy=tutorial,
        expectation=expected.describe() if expected is not None else "-",
        met=recorded_met(cell),
        samples_per_s=m.get("train_samples_per_s"),
        samples_per_s_p25=m.get("train_samples_per_s_p25"),
        samples_per_s_p75=m.get("train_samples_per_s_p75"),
        roofline_fraction=m.get("roofline_fraction"),
        attainable_fraction=m.get("attainable_fraction"),
        run_id=cell.run_id,
    )


def table_columns(rows: list[CellRow]) -> dict[str, list[Any]]:
    """The rows as a dict of columns, for MlflowClient.log_table."""
    names = list(CellRow.__dataclass_fields__)
    return {name: [getattr(row, name) for row in rows] for name in names}


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _speed(row: CellRow) -> str:
    if row.samples_per_s is None:
        return "-"
    text = f"{row.samples_per_s:,.0f}"
    if row.samples_per_s_p25 is not None and row.samples_per_s_p75 is not None:
        text += f" ({row.samples_per_s_p25:,.0f}-{row.samples_per_s_p75:,.0f})"
    return text


TABLE_HEADER = [
    *CELL_COLUMNS,
    "samples/s (p25-p75)",
    "roofline",
    "of attainable",
]


def row_cells(row: CellRow) -> list[str]:
    """A row as the text of its columns (TABLE_HEADER)."""
    roofline = "-" if row.roofline_fraction is None else f"{row.roofline_fraction:.3f}"
    limit = "-" if row.attainable_fraction is None else f"{row.attainable_fraction:.3f}"
    return [
        row.stage,
        row.backend,
        row.device,
        str(row.seed),
        row.outcome,
        _percent(row.test_accuracy),
        row.tutorial,
        row.expectation,
        row.met,
        _speed(row),
        roofline,
        limit,
    ]


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(map(markdown.text, cells)) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)])


GROUP_HEADER = [
    *GROUP_COLUMNS,
    "samples/s (mean ± std)",
]


def _spread(summary: Summary | None, scale: float, style: str, unit: str = "") -> str:
    """mean ± std over the seeds that have the value; one seed's value as it is (n=1)."""
    if summary is None:
        return "-"
    if summary.n == 1:
        return f"{scale * summary.mean:{style}}{unit} (n=1)"
    return f"{scale * summary.mean:{style}} ± {scale * summary.std:{style}}{unit}"


def group_rows(rows: list[CellRow]) -> list[list[str]]:
    """Per stage x backend x device of several seeds: the closing table's second part."""
    groups: dict[tuple[str, str, str], list[CellRow]] = {}
    for row in rows:
        groups.setdefault((row.stage, row.backend, row.device), []).append(row)
    lines = []
    for (stage, backend, device), members in groups.items():
        if len(members) < 2:
            continue
        outcomes: dict[str, int] = {}
        for row in members:
            key = row.outcome.split(" at step")[0]
            outcomes[key] = outcomes.get(key, 0) + 1
        accuracy = summarize([r.test_accuracy for r in members if r.test_accuracy is not None])
        speed = summarize([r.samples_per_s for r in members if r.samples_per_s is not None])
        lines.append(
            [
                stage,
                backend,
                device,
                str(len(members)),
                ", ".join(f"{n} {k}" for k, n in outcomes.items()),
                _spread(accuracy, 100, ".2f", "%"),
                f"[{100 * accuracy.ci95_low:.2f}, {100 * accuracy.ci95_high:.2f}]"
                if accuracy and accuracy.n > 1
                else "-",
                _spread(speed, 1, ",.0f"),
            ]
        )
    return lines


def invocation_pivot(invocation: Invocation) -> Pivot:
    """The results at a glance (bench.recording.pivot) from the cells the store holds."""
    entries = []
    for cell in invocation.cells:
        step = cell.metrics.get("diverged_step")
        entries.append(
            Entry(
                stage=cell.stage,
                backend=cell.backend,
                device=cell.device,
                outcome=cell.outcome,
                test_accuracy=cell.metrics.get("test_accuracy"),
                samples_per_s=cell.metrics.get("train_samples_per_s"),
                diverged_step=None if step is None else int(step),
            )
        )
    return pivot(entries)


# ---- the description ----------------------------------------------------------------------


def _machine(invocation: Invocation) -> str:
    """CPU, cores, GPU and frameworks, from the cells' recorded environment."""
    if not invocation.cells:
        return "-"
    frameworks: dict[str, str] = {}
    gpus: set[str] = set()
    env: dict[str, str] = {}
    for cell in invocation.cells:
        cell_env = environment_of(cell.params)
        if "framework" not in cell_env:  # a cell that never started: no environment
            continue
        env = cell_env
        frameworks[env["framework"]] = env.get("framework_version", "?")
        if "gpu_model" in env:
            gpus.add(env["gpu_model"])
    parts = [
        env.get("cpu_model", "unknown CPU"),
        f"{env.get('cores_available', '?')} cores available",
        f"{env.get('threads', '?')} threads",
    ]
    if gpus:
        parts.append("GPU " + ", ".join(sorted(gpus)))
    parts.append(", ".join(f"{name} {version}" for name, version in frameworks.items()) or "-")
    parts.append(env.get("platform", ""))
    return "; ".join(p for p in parts if p)


def _summary_line(invocation: Invocation) -> str:
    cells = invocation.cells
    failed = sum(cell.outcome in ("failed", "unfinished") for cell in cells)
    # The name starts with its command ("run 4 stages | ..."): no "run" before it.
    words = [
        f"**{markdown.text(invocation.kind)}** {markdown.code(invocation.name)}"
        f" ({invocation.status})"
    ]
    if cells:
        words.append(f"{len(cells)} cells, {failed} failed")
    if "speed_stable" in invocation.tags:
        stable = invocation.tags["speed_stable"] == "true"
        words.append("speed stable" if stable else _unstable(invocation))
    canary = _canary_failures(invocation)
    if canary:
        words.append(canary)
    if invocation.kind == "parity" and "passed" in invocation.tags:
        words.append("parity " + ("passed" if invocation.tags["passed"] == "true" else "FAILED"))
    if invocation.kind == "comparison":
        tags = invocation.tags
        verdict, exit_code = tags.get("verdict", "?"), tags.get("exit_code", "?")
        words.append(f"verdict **{markdown.text(verdict)}** (exit {markdown.text(exit_code)})")
        for side in ("baseline", "candidate"):
            if side in tags:
                url = run_url(invocation.tracking_uri, invocation.experiment_id, tags[side])
                words.append(f"{side} [{markdown.text(tags[side])}]({url})")
    return " · ".join(words)


def _unstable(invocation: Invocation) -> str:
    """Which cells' samples/s are suspect, and why (their tag speed_unstable_reason)."""
    several_seeds = len({cell.seed for cell in invocation.cells}) > 1
    suspects = []
    for cell in invocation.cells:
        if cell.tags.get("speed_stable") != "false":
            continue
        name = f"{cell.backend} {cell.stage} {cell.device}" + (
            f" seed {cell.seed}" if several_seeds else ""
        )
        reason = cell.tags.get("speed_unstable_reason", "no reason recorded")
        suspects.append(f"{name} ({reason.replace('; ', ', ')})")
    named = "; ".join(suspects) or "the machine was busy around the run"
    return f"**speed NOT stable**, timings suspect ({markdown.text(named)})"


def _canary_failures(invocation: Invocation) -> str:
    """Cells whose load canary failed to measure: said apart, as they judge neither way."""
    failed = [
        f"{cell.backend} {cell.stage} {cell.device} ({cell.tags['canary_unreliable']})"
        for cell in invocation.cells
        if cell.tags.get("canary_unreliable")
    ]
    return f"load canary failed on {markdown.text('; '.join(failed))}" if failed else ""


def _parent_figures(invocation: Invocation) -> str:
    """The parent's own measurements (peaks, parity's differences) as a Markdown list."""
    skip = ("cells", "cells_failed")
    lines = [
        f"- {key}: {value:.6g}"
        for key, value in sorted(invocation.metrics.items())
        if key not in skip
    ]
    return "\n".join(lines)


def description(invocation: Invocation, report_dir: Path | None = None) -> str:
    """The Markdown for the parent run's description (mlflow.note.content): the results at a
    glance first, then what was run, each cell, and how it was run."""
    parts = []
    if invocation.cells:
        glance = invocation_pivot(invocation)
        parts += [_markdown_table(glance.header, glance.rows), markdown.text(CAPTION)]
    parts.append(_summary_line(invocation))
    if invocation.cells:  # this page is the run's own: the link goes to its cells
        url = _cells_link(invocation)
        parts.append(f"[Its cells side by side in the MLflow UI]({url})")
        rows = [cell_row(cell) for cell in invocation.cells]
        parts.append(_markdown_table(TABLE_HEADER, [row_cells(row) for row in rows]))
        groups = group_rows(rows)
        if groups:
            parts.append(_markdown_table(GROUP_HEADER, groups))
    for name, text in invocation.texts.items():
        parts.append(f"{markdown.code(name)}:\n\n{markdown.fenced(text)}")
    figures = _parent_figures(invocation)
    if figures:
        parts.append("Recorded on this run:\n\n" + figures)
    parts.append("\n".join(_facts(invocation, report_dir)))
    return "\n\n".join(parts) + "\n"


def _facts(invocation: Invocation, report_dir: Path | None) -> list[str]:
    """How it was run, as Markdown list items: command, commit, machine, store, report."""
    commit = invocation.tags.get("git_commit", "unknown")
    dirty = " (uncommitted changes)" if invocation.tags.get("git_dirty") == "true" else ""
    command = invocation.params.get("command") or invocation.tags.get("command")
    facts = [
        f"- command: {markdown.code(f'{PROGRAM} {store.redacted(command)}')}"
        if command
        else "- command: -",
        f"- commit: {markdown.code(commit)}{dirty}",
        f"- machine: {markdown.text(_machine(invocation))}" if invocation.cells else "",
        f"- store: {markdown.code(invocation.tracking_uri)}, run `{invocation.run_id}`",
    ]
    facts = [fact for fact in facts if fact]  # a comparison has no cells, so no machine
    if report_dir is not None:
        page = markdown.code(str(report_dir / "report.html"))
        facts.append(f"- report: {page} (also this run's artifact)")
    return facts


# ---- the report ---------------------------------------------------------------------------


@dataclass
class Report:
    invocation: Invocation
    rows: list[CellRow]
    description: str
    figures: dict[str, Any]  # artifact path (figures/<stage>.png) -> matplotlib Figure
    pngs: dict[str, bytes]  # the same figures rendered, then the parent's own images


def build_report(tracker: Tracker, run_id: str, report_dir: Path | None = None) -> Report:
    from bench.recording.figures import figure_png, stage_figure

    invocation = tracker.reader.invocation(run_id)
    _check_cells(invocation)
    if invocation.cells:  # saved first, so that the report links to it
        view = tracker.save_view(invocation.experiment_id, run_id)
        invocation = dataclasses.replace(invocation, view=view)
    figures = {
        f"figures/{stage}.png": stage_figure(invocation, stage) for stage in invocation.stages
    }
    pngs = {path: figure_png(figure) for path, figure in figures.items()}
    pngs |= invocation.images
    return Report(
        invocation=invocation,
        rows=[cell_row(cell) for cell in invocation.cells],
        description=description(invocation, report_dir),
        figures=figures,
        pngs=pngs,
    )


def _check_cells(invocation: Invocation) -> None:
    """An invocation whose report was made with cells that the store no longer holds (deleted
    in the UI): a report made now would replace its description with an empty table."""
    recorded = NOTE_TAG in invocation.tags
    if invocation.kind in ("matrix", "perf") and not invocation.cells and recorded:
        raise BenchError(
            f"run {invocation.run_id} has no cells left in {invocation.tracking_uri} (deleted?);"
            " its report is left as it was: restore its cells (`mlflow runs restore`) to make"
            " it again"
        )


def _html_table(header: list[str], rows: list[list[str]], css: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    attribute = f' class="{css}"' if css else ""
    return f"<table{attribute}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cells_link(inv: Invocation) -> str:
    return cells_link(inv.tracking_uri, inv.experiment_id, inv.run_id, inv.view)


def _where_in_the_ui(inv: Invocation) -> str:
    """The UI's address and what it needs: a store's UI is served on the machine that holds
    it, so a mailed report says so rather than link to a page only that machine shows."""
    if inv.cells:
        url, what = _cells_link(inv), "Its cells"
    else:
        url, what = run_url(inv.tracking_uri, inv.experiment_id, inv.run_id), "This run"
    link = f'<a href="{html.escape(url)}">{what} in the MLflow UI</a>'
    if not ui_command(inv.tracking_uri):
        return f"<p>{link} (the tracking server's).</p>"
    serve = f"mlflow ui --backend-store-uri {inv.tracking_uri}"
    return (
        f"<p>{link}: served by <code>{html.escape(serve)}</code> on the machine that holds"
        " the store; the link opens nothing elsewhere.</p>"
    )


def _heading(name: str, report: Report) -> str:
    """What an image or text shows, not its file name."""
    if name in report.figures:
        stage = Path(name).stem
        backends = ", ".join(
            dict.fromkeys(c.backend for c in report.invocation.cells if c.stage == stage)
        )
        return f"{stage}: accuracy, loss, throughput and time per backend ({backends})"
    return Path(name).stem.replace("_", " ")


def report_html(report: Report) -> str:
    """One self-contained page: the results at a glance, what was run, each cell, every
    image inline, and how it was run."""
    inv = report.invocation
    title = f"mlp-bench {inv.kind} {inv.name}"
    body = [f"<h1>{html.escape(title)}</h1>"]
    if report.rows:
        glance = invocation_pivot(inv)
        body.append(_html_table(glance.header, glance.rows, "glance"))
        body.append(f'<p class="caption">{html.escape(CAPTION)}</p>')
    body.append(f"<p>{markdown.inline_html(_summary_line(inv))}</p>")
    body.append(_where_in_the_ui(inv))
    if report.rows:
        body.append("<h2>Each cell</h2>")
        body.append(_html_table(TABLE_HEADER, [row_cells(row) for row in report.rows]))
        groups = group_rows(report.rows)
        if groups:
            body.append("<h2>Over the seeds</h2>" + _html_table(GROUP_HEADER, groups))
    for name, text in inv.texts.items():
        body.append(f"<h2>{html.escape(_heading(name, report))}</h2><pre>{html.escape(text)}</pre>")
    for name, png in report.pngs.items():
        data = base64.b64encode(png).decode("ascii")
        heading = html.escape(_heading(name, report))
        body.append(f'<h2>{heading}</h2><img alt="{heading}" src="data:image/png;base64,{data}">')
    facts = "".join(
        f"<li>{markdown.inline_html(fact.removeprefix('- '))}</li>" for fact in _facts(inv, None)
    )
    body.append(f"<h2>How it was run</h2><ul>{facts}</ul>")
    measured = _parent_figures(inv)
    if measured:  # the parent's own figures (peaks, load at the start, parity's differences)
        items = "".join(f"<li>{html.escape(line[2:])}</li>" for line in measured.splitlines())
        body.append(f"<h2>Recorded on this run</h2><ul>{items}</ul>")
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}img{max-width:100%}"
        "pre{background:#f6f6f6;padding:1em;overflow-x:auto}"
        "table.glance{font-size:1.1em}table.glance td,table.glance th{padding:4px 10px}"
        ".caption{color:#555;font-size:0.9em}"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{style}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def write_files(report: Report, folder: Path) -> Path:
    """description.md, cells.json, the figures and report.html into `folder`."""
    (folder / "figures").mkdir(parents=True, exist_ok=True)
    (folder / "description.md").write_text(report.description)
    columns = table_columns(report.rows)
    (folder / "cells.json").write_text(json.dumps(columns, indent=1) + "\n")
    for path, png in report.pngs.items():
        if path in report.figures:
            (folder / path).write_bytes(png)
    page = folder / "report.html"
    page.write_text(report_html(report))
    return page


def record(tracker: Tracker, report: Report, folder: Path) -> None:
    """On the parent run: the description, the table, the figures and report.html."""
    run_id = report.invocation.run_id
    tracker.set_description(run_id, report.description)
    if report.rows:
        tracker.log_table(run_id, table_columns(report.rows), "cells.json")
    # The PNGs already rendered, not log_figure: it renders each figure again, which was half
    # of the report's time (5.1 of 9.5 s, two stages, loaded 2-core machine).
    for path in report.figures:
        tracker.log_artifact(run_id, folder / path, "figures")
    tracker.log_artifact(run_id, folder / "report.html")


def make_report(tracker: Tracker, run_id: str, folder: Path | None = None) -> Path:
    """Build the report of a parent run, write it under `folder` (default: reports/<run id>
    beside the store) and record it on the run; returns report.html's path."""
    folder = folder or default_report_dir(tracker.uri, run_id)
    report = build_report(tracker, run_id, folder)
    page = write_files(report, folder)
    record(tracker, report, folder)
    return page


def report_safely(tracker: Tracker, run_id: str, command: str | None = None) -> Path | None:
    """make_report at the end of an invocation: a report that fails must not lose the run,
    so any failure is one WARNING line and the invocation goes on."""
    start = time.perf_counter()
    try:
        if command is not None:
            tracker.set_tags(run_id, {"command": command[:500]})
        page = make_report(tracker, run_id)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200]
        print(
            f"WARNING: the report of run {run_id} could not be made ({type(exc).__name__}:"
            f" {reason}); make it with `{PROGRAM} report {run_id}`",
            flush=True,
        )
        return None
    print(f"report: {page} ({time.perf_counter() - start:.1f} s)", flush=True)
    return page


def command_line() -> str:
    """This process's arguments after `mlp-bench` (or `python -m bench`), as the parent runs
    record them."""
    return " ".join(sys.argv[1:])
