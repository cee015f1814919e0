"""`bench compare`'s verdict written out: the text printed and kept as compare.txt, the table
of cells kept as compare.csv (bench.recording.verdict makes the verdict)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from bench.recording.verdict import (
    POWER,
    AccuracyResult,
    Comparison,
    GroupSpeed,
    PairResult,
    Side,
    SpeedResult,
    cell_name,
    group_of,
    min_exact_p,
)

# compare.txt is printed, kept as an artifact and shown in the run's description, where a longer
# line widens the whole page (one of 420 characters made it 3,265 px wide, the tags off-screen).
WIDTH = 100
# A cell's part in the verdict; "improved": its group's accuracy is significantly better.
STATUSES = ("regression", "inconclusive", "improved", "no change")
DIRECTION = (
    "ratio = candidate / baseline median samples/s: above 1 the candidate is faster, below 1 slower"
)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _rate(value: float) -> str:
    return f"{value:,.0f}"


def _optional(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _wrapped(text: str) -> list[str]:
    """One paragraph in lines of at most WIDTH, the lines after the first indented; "p = 0.004"
    is kept on one line (held together by a character no text here holds)."""
    lines = textwrap.wrap(
        text.replace(" = ", "\0=\0"),
        WIDTH,
        subsequent_indent="  ",
        break_long_words=False,
        break_on_hyphens=False,
    )
    return [line.replace("\0", " ") for line in lines]


def speed_word(comparison: Comparison, pair: PairResult) -> str:
    """A cell's speed column: its own test's answer, its group's ("by group: ok"), or why it
    was not judged; never "ok" for a speed that the verdict did not judge."""
    if pair.not_judged:
        return "not judged"
    if pair.by_processes:
        group = next(g for g in comparison.groups if g.group == group_of(pair.key))
        word = f"by group: {group.speed.verdict}"
    elif pair.speed is None:
        return "no samples"
    elif pair.speed.verdict == "too few samples":
        return pair.speed.verdict
    else:
        word = pair.speed.verdict
    return f"not judged ({comparison.speed_unjudged})" if comparison.speed_unjudged else word


def cell_status(comparison: Comparison, pair: PairResult) -> str:
    """A paired cell's part in the verdict (one of STATUSES): a regression of its accuracy
    group or its speed, a check that could not be made, or nothing found."""
    check = next(a for a in comparison.accuracy if a.group == group_of(pair.key))
    speed = speed_word(comparison, pair)
    if "regression" in (check.verdict, speed.removeprefix("by group: ")):
        return "regression"
    if check.verdict == "ok" and speed in ("ok", "by group: ok"):
        return "improved" if check.method == "better" else "no change"
    return "inconclusive"


def accuracy_label(check: AccuracyResult) -> str:
    """An accuracy verdict in a word or two: its method ("bit-identical", "equivalent ±0.3",
    "better", "worse"), "inconclusive", "outcome changed" or "not judged"."""
    if check.method == "equivalent":
        return f"equivalent ±{check.difference.margin:g}" if check.difference else "equivalent"
    return {
        "not shown equivalent": "inconclusive",
        "outcome": "outcome changed",
        "none": "not judged",
    }.get(check.method, check.method)


def _speed_columns(speed: SpeedResult | None) -> dict[str, str]:
    return {
        "samples_per_s_base": "-" if speed is None else _rate(speed.base_median),
        "samples_per_s_cand": "-" if speed is None else _rate(speed.cand_median),
        "ratio": "-" if speed is None else f"{speed.ratio:.3f}",
        "ci95_low": "-" if speed is None else f"{speed.ci_low:.3f}",
        "ci95_high": "-" if speed is None else f"{speed.ci_high:.3f}",
        "p_value": "-" if speed is None else f"{speed.p_value:.2g}",
        "n": "-" if speed is None else f"{speed.n_base}/{speed.n_cand}",
        "detectable_slowdown": "-" if speed is None else _pct(speed.detectable),
    }


def _group_status(comparison: Comparison, group: GroupSpeed) -> tuple[str, str]:
    """A group judged over processes: its speed column and its part in the verdict."""
    if comparison.speed_unjudged:
        return f"not judged ({comparison.speed_unjudged})", "inconclusive"
    verdict = group.speed.verdict
    return verdict, "regression" if verdict == "regression" else "no change"


def group_rows(comparison: Comparison) -> list[dict[str, str]]:
    """One row per group judged over processes (n: processes a side)."""
    rows = []
    for group in comparison.groups:
        speed, status = _group_status(comparison, group)
        figures = _speed_columns(group.speed)
        rows.append({"group": group.group, **figures, "speed": speed, "status": status})
    return rows


def table_rows(comparison: Comparison) -> list[dict[str, str]]:
    """One row per paired cell: the figures the table, the CSV and the plot show (n: epochs
    after the first a side). A cell of a group judged over processes shows its epochs' figures
    for information; its group's row carries the speed verdict."""
    accuracy = {a.group: a for a in comparison.accuracy}
    rows = []
    for pair in comparison.pairs:
        check = accuracy[group_of(pair.key)]
        outcome = pair.base.outcome
        if pair.cand.outcome != outcome:
            outcome = f"{outcome}->{pair.cand.outcome}"
        rows.append(
            {
                "cell": cell_name(pair.key),
                "outcome": outcome,
                "test_acc_base": _optional(pair.base.test_accuracy),
                "test_acc_cand": _optional(pair.cand.test_accuracy),
                "accuracy_check": "not judged"
                if pair.not_judged
                else f"{check.method}: {check.verdict}",
                "accuracy": "not judged" if pair.not_judged else accuracy_label(check),
                **_speed_columns(pair.speed),
                "speed": speed_word(comparison, pair),
                "status": cell_status(comparison, pair),
            }
        )
    return rows


def csv_text(comparison: Comparison) -> str:
    """The cell rows (level `epochs`) and the group rows (level `processes`, the group's name
    in the cell column) as one CSV."""
    import csv
    import io

    accuracy = {a.group: a for a in comparison.accuracy}
    rows = [{**row, "level": "epochs"} for row in table_rows(comparison)]
    for group in group_rows(comparison):
        name = group.pop("group")
        check = accuracy[name]
        rows.append(
            {
                "cell": name,
                "outcome": "-",
                "test_acc_base": _optional(check.base_mean),
                "test_acc_cand": _optional(check.cand_mean),
                "accuracy_check": f"{check.method}: {check.verdict}",
                "accuracy": accuracy_label(check),
                **group,
                "level": "processes",
            }
        )
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def _changes_lines(
    title: str, found: dict[str, tuple[str, str]], expected: frozenset[str] = frozenset()
) -> list[str]:
    """One line a change; those of `expected` keys (Settings.expected_software) say so."""
    if not found:
        return [f"{title}: none"]
    return [f"{title}:"] + [
        f"  {k}: {old} -> {new}" + (" (expected)" if k.split(" ")[-1] in expected else "")
        for k, (old, new) in found.items()
    ]


def _aligned(header: tuple[str, ...], body: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, tuple("-" * w for w in widths), *body]
    ]


def _side_line(side: Side) -> str:
    """A side's id and name, and its status where it did not finish (KILLED, FAILED)."""
    ended = f", ended {side.status}" if side.status != "FINISHED" else ""
    return f"{side.run_id} ({side.name}{ended})"


def _unpaired_lines(c: Comparison) -> list[str]:
    """The cells of one side only; where the other side was cut short, that is why."""
    lines = []
    for role, keys, other, other_role in (
        ("baseline", c.unpaired_base, c.candidate, "candidate"),
        ("candidate", c.unpaired_cand, c.baseline, "baseline"),
    ):
        cut = other.status != "FINISHED"
        why = f" (the {other_role} ended {other.status} before running it)" if cut else ""
        lines += [f"unpaired: {cell_name(key)} only in the {role}{why}" for key in keys]
    return lines


def samples_needed(alpha: float) -> int:
    """The fewest samples a side with which an exact one-sided Mann-Whitney test can reach
    p < alpha (5 at 0.01: 1/252)."""
    return next(n for n in range(1, 1000) if min_exact_p(n, n) <= alpha)


def _too_few_lines(c: Comparison) -> list[str]:
    """The cells whose speed had too few samples: one paragraph for all of them, not a line
    each (a 1-epoch matrix has 12)."""
    if len(c.too_few) < 2:
        return [line for text in c.too_few for line in _wrapped(f"INCONCLUSIVE {text}")]
    few = [
        p
        for p in c.pairs
        if not p.by_processes
        and not p.not_judged
        and (p.speed is None or p.speed.verdict == "too few samples")
    ]
    counts = {(0, 0) if p.speed is None else (p.speed.n_base, p.speed.n_cand) for p in few}
    if len(counts) == 1:
        [(n_base, n_cand)] = counts
        each = f" ({n_base} vs {n_cand} each)"
        names = ", ".join(cell_name(p.key) for p in few)
    else:
        each = ""
        names = ", ".join(
            f"{cell_name(p.key)} ({0 if p.speed is None else p.speed.n_base} vs"
            f" {0 if p.speed is None else p.speed.n_cand})"
            for p in few
        )
    need = samples_needed(c.settings.alpha)
    text = (
        f"INCONCLUSIVE speed of {len(few)} cells: too few epochs after the first{each} for"
        f" p < {c.settings.alpha:g}, which needs {need} a side (--epochs {need + 1}), or"
        f" {need}+ seeds a side: {names}"
    )
    return _wrapped(text)


def _deciding_lines(c: Comparison) -> list[str]:
    """What makes the verdict: each regression, each reason it is inconclusive, and the
    flags judged anyway; one paragraph each."""
    lines = [line for text in c.regressions for line in _wrapped(f"REGRESSION {text}")]
    too_few = set(c.too_few)
    for text in c.inconclusive:
        if text not in too_few:
            lines += _wrapped(f"INCONCLUSIVE {text}")
    lines += _too_few_lines(c)
    if c.settings.allow_busy:
        for text in c.speed_flags:
            lines += _wrapped(f"WARNING (judged anyway, --allow-busy) {text}")
    return lines


def _cell_lines(c: Comparison) -> list[str]:
    """The cells that are not "no change", regressions first, as two tables (the judgements,
    then the speed figures: one would be too wide); the rest counted."""
    rows = table_rows(c)
    shown = sorted(
        (r for r in rows if r["status"] != "no change"),
        key=lambda r: STATUSES.index(r["status"]),
    )
    rest = len(rows) - len(shown)
    if not shown:
        return [f"{rest} cell(s), all no change (each cell's figures: compare.csv)"]
    judged = [
        (
            r["cell"],
            r["outcome"],
            f"{r['test_acc_base']} -> {r['test_acc_cand']}",
            r["accuracy"],
            r["speed"],
        )
        for r in shown
    ]
    lines = _aligned(("cell", "outcome", "test acc b -> c", "accuracy", "speed"), judged)
    figures = [(r["cell"], *_figures(r)) for r in shown if r["ratio"] != "-"]
    if figures:
        lines += ["", *_aligned(("cell", *FIGURES_HEADER), figures)]
    if rest:
        lines.append(f"{rest} more cell(s): no change (each cell's figures: compare.csv)")
    return lines


FIGURES_HEADER = ("samples/s b -> c", "ratio [95% CI]", "p", "n b/c", "detectable")


def _figures(row: dict[str, str]) -> tuple[str, ...]:
    return (
        f"{row['samples_per_s_base']} -> {row['samples_per_s_cand']}",
        f"{row['ratio']} [{row['ci95_low']}, {row['ci95_high']}]",
        row["p_value"],
        row["n"],
        row["detectable_slowdown"],
    )


def _legend(c: Comparison) -> list[str]:
    """Each column once, and the rules that judge speed."""
    s = c.settings
    need = samples_needed(s.alpha)
    explained = [
        "outcome: how training ended (baseline->candidate where it changed).",
        "test acc b -> c: test accuracy, baseline -> candidate.",
        "accuracy: the check of the stage/backend/device (the lines above the tables):"
        " bit-identical (every seed's step losses the same bits), equivalent ±m (TOST: the"
        f" {1 - 2 * s.alpha:.0%} CI of the mean difference within ±m accuracy points,"
        " --equivalence-margin), better or worse (one-sided Welch p < alpha), inconclusive (none"
        " of these shown), outcome changed; then the mean test accuracies, baseline->candidate.",
        "speed ratio [95% CI]: of each stage/backend, over processes where 5+ a side, else over"
        " the epochs of its one cell (several cells: per cell, in the tables below).",
        "verdict: of the stage/backend: its cells' worst status (regression, inconclusive,"
        " improved, no change).",
        "speed: the cell's speed test: ok (no slowdown it can call significant), regression,"
        " within run noise, too few samples, by group (judged over processes, below), or not"
        " judged (busy: a run or cell is flagged speed_stable false or a peak moved, and"
        " --allow-busy judges it anyway; hardware: it differs).",
        "samples/s b -> c: median samples/s of the epochs after the first (the first compiles).",
        "ratio [95% CI]: candidate / baseline median samples/s (above 1: faster) and its"
        " bootstrap 95% interval.",
        "p: one-sided Mann-Whitney U p-value that the candidate is slower; small says slower."
        " It reads 1 (or near) when the candidate was as fast or faster; with n samples a side"
        f" it cannot fall below 1/C(2n, n) (0.5 at one, 1/252 at five), so fewer than {need}"
        f" a side can never reach p < {s.alpha:g}.",
        "n b/c: samples a side: epochs after the first (a cell), processes (a group).",
        f"detectable: the smallest slowdown the samples' noise lets the test find with"
        f" {POWER:.0%} power (-: too few samples).",
        f"A cell regresses with p < {s.alpha:g} and a slowdown beyond {s.max_slowdown:.0%} and"
        f" beyond the run noise {s.run_noise:.0%} (--run-noise: how far one process's speed"
        " moves with nothing changed, which one process a side cannot show); a group over"
        f" processes with p < {s.alpha:g} and a slowdown beyond {s.max_slowdown:.0%}.",
    ]
    return ["columns:", *(line for text in explained for line in _wrapped(f"- {text}"))]


def _accuracy_lines(c: Comparison) -> list[str]:
    """Each group's accuracy check; the groups that passed alike on one line."""
    lines = []
    passed: dict[str, list[str]] = {}
    for accuracy in c.accuracy:
        if accuracy.verdict == "ok":
            passed.setdefault(accuracy.detail, []).append(accuracy.group)
        else:
            lines += _wrapped(f"accuracy {accuracy.group}: {accuracy.verdict} ({accuracy.detail})")
    for detail, groups in passed.items():
        lines += _wrapped(f"accuracy ok ({detail}): {', '.join(groups)}")
    return lines


def _means(check: AccuracyResult) -> str:
    """The mean test accuracies, baseline->candidate, in per cent."""
    if check.base_mean is None or check.cand_mean is None:
        return "-"
    return f"{100 * check.base_mean:.2f}->{100 * check.cand_mean:.2f}"


def _ratio(speed: SpeedResult | None) -> str:
    if speed is None:
        return "-"
    return f"{speed.ratio:.3f} [{speed.ci_low:.3f}, {speed.ci_high:.3f}]"


def _group_speed(c: Comparison, group: str, pairs: list[PairResult]) -> str:
    """A group's speed ratio and CI: over processes where it was judged so, else its one
    cell's over epochs; "per cell" where it has several cells judged one by one."""
    over = next((g for g in c.groups if g.group == group), None)
    if over is not None:
        return _ratio(over.speed)
    judged = [p for p in pairs if not p.not_judged]
    if len(judged) == 1:
        return _ratio(judged[0].speed)
    return "per cell" if judged else "-"


def _group_lines(c: Comparison) -> list[str]:
    """One row per stage and backend: its accuracy verdict and mean accuracies, its speed
    ratio and CI, and the worst status of its cells."""
    members: dict[str, list[PairResult]] = {}
    for pair in c.pairs:
        members.setdefault(group_of(pair.key), []).append(pair)
    devices = sorted({key[2] for key in (p.key for p in c.pairs)})
    body = []
    for check in c.accuracy:
        stage, backend, device = check.group.split("/")
        pairs = members[check.group]
        statuses = {cell_status(c, p) for p in pairs}
        body.append(
            (
                stage,
                backend if len(devices) == 1 else f"{backend}/{device}",
                f"{accuracy_label(check)} {_means(check)}",
                _group_speed(c, check.group, pairs),
                min(statuses, key=STATUSES.index),
            )
        )
    title = f"per stage and backend (on {devices[0]}):" if len(devices) == 1 else "per group:"
    header = ("stage", "backend", "accuracy", "speed ratio [95% CI]", "verdict")
    return [title, *_aligned(header, body)]


def report_text(comparison: Comparison) -> str:
    """What compare prints and records: the verdict and what makes it, what changed, the cells
    that are not "no change", the groups over processes, and what each column means."""
    c = comparison
    statuses = [r["status"] for r in table_rows(c)]
    counted = ", ".join(f"{statuses.count(s)} {s}" for s in STATUSES if s in statuses)
    lines = [
        f"verdict: {c.verdict} (exit {c.exit_code})",
        f"paired cells: {counted}",
        *_deciding_lines(c),
        "",
        *_wrapped(f"baseline  {_side_line(c.baseline)}"),
        *_wrapped(f"candidate {_side_line(c.candidate)}"),
        *_wrapped(DIRECTION),
        *_changes_lines("what was trained differs", c.trained_changes),
        *_changes_lines("software that differs", c.software_changes, c.settings.expected_software),
        *_changes_lines("speed options that differ", c.option_changes),
        *_changes_lines("hardware that differs", c.hardware_changes),
        *_unpaired_lines(c),
        *_accuracy_lines(c),
        "",
        *_group_lines(c),
        "",
        *_cell_lines(c),
    ]
    if c.groups:
        lines += ["", "speed over processes (each cell's median samples/s one sample):"]
        body = [(r["group"], *_figures(r), r["speed"]) for r in group_rows(c)]
        lines += _aligned(("group", *FIGURES_HEADER, "speed"), body)
    lines += ["", *_legend(c)]
    return "\n".join(lines)
