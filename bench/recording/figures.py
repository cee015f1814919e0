"""The report's figures: one per stage, every backend it ran side by side, drawn from what the store
holds (bench.recording.reader.Invocation).

Built on matplotlib's Figure directly, not pyplot: no global figure state and no display, so a
report made at the end of an invocation (or in a test) never opens a window or leaks figures.
PNGs are rendered by the Agg canvas.
"""

from __future__ import annotations

import io
import math
import textwrap
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from bench.recording.reader import Invocation, RecordedCell

# The frameworks' own colours, the same in every figure (and in the MLflow views the harness
# saves), so a backend is recognised by its colour alone.
BACKEND_COLORS = {"tensorflow": "#FF6F00", "torch": "#EE4C2C", "jax": "#5E97F6"}
# How the frameworks name themselves, for titles.
BACKEND_NAMES = {"tensorflow": "TensorFlow", "torch": "PyTorch", "jax": "JAX"}
DEVICE_STYLES = {"cpu": "-", "gpu": "--"}
OTHER_COLOR = "#555555"
DPI = 90
# Inside "train" (compilation) or the sum of the others (total): not stacked again.
_NOT_STACKED = ("total", "compilation")


def _color(backend: str) -> str:
    return BACKEND_COLORS.get(backend, OTHER_COLOR)


def _groups(cells: list[RecordedCell]) -> dict[tuple[str, str], list[RecordedCell]]:
    """Cells per backend x device, in the order they ran."""
    groups: dict[tuple[str, str], list[RecordedCell]] = {}
    for cell in cells:
        groups.setdefault((cell.backend, cell.device), []).append(cell)
    return groups


def _curves(members: list[RecordedCell], key: str, scale: float) -> dict[int, list[float]]:
    """Per epoch, the finite values of the seeds that reached it."""
    per_epoch: dict[int, list[float]] = {}
    for cell in members:
        for step, value in cell.histories.get(key, []):
            if math.isfinite(value):
                per_epoch.setdefault(step, []).append(scale * value)
    return per_epoch


def _with_values(members: list[RecordedCell], key: str, log: bool) -> list[RecordedCell]:
    """The seeds whose values the thick line is drawn from: a seed that diverged at once has
    none, and a mean of one seed is that seed."""
    return [
        cell
        for cell in members
        if any(math.isfinite(v) and (v > 0 or not log) for _, v in cell.histories.get(key, []))
    ]


def _plot_epochs(ax: Axes, cells: list[RecordedCell], key: str, scale: float, log: bool) -> None:
    """Mean over seeds (thick), the range of the seeds (band) and each seed (thin)."""
    from matplotlib.ticker import MaxNLocator

    seen: set[int] = set()
    for (backend, device), members in _groups(cells).items():
        color, style = _color(backend), DEVICE_STYLES.get(device, ":")
        for cell in members:
            points = [(s, scale * v) for s, v in cell.histories.get(key, []) if math.isfinite(v)]
            if log:
                points = [(s, v) for s, v in points if v > 0]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, color=color, ls=style, lw=0.7, alpha=0.45)
        per_epoch = _curves(members, key, scale)
        if log:
            per_epoch = {e: [v for v in vs if v > 0] for e, vs in per_epoch.items()}
            per_epoch = {e: vs for e, vs in per_epoch.items() if vs}
        if not per_epoch:
            continue
        epochs = sorted(per_epoch)
        seen.update(epochs)
        mean = [float(np.mean(per_epoch[e])) for e in epochs]
        drawn = _with_values(members, key, log)
        several = len(drawn) > 1
        label = f"{backend} {device} " + (
            f"(mean of {len(drawn)} seeds)" if several else f"(seed {drawn[0].seed})"
        )
        ax.plot(epochs, mean, color=color, ls=style, lw=2, label=label, marker="o", ms=3)
        if several:
            low = [min(per_epoch[e]) for e in epochs]
            high = [max(per_epoch[e]) for e in epochs]
            ax.fill_between(epochs, low, high, color=color, alpha=0.15, lw=0)
    if log:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(seen) == 1:  # one epoch (a cell that diverged in it): not a range of 0.1 epochs
        ax.set_xlim(min(seen) - 1, min(seen) + 1)
    ax.set_xlabel("epoch")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    else:
        _note(ax, "no finite value recorded (diverged or unfinished)")


def _note(ax: Axes, text: str) -> None:
    """Why a panel is empty."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", fontsize=8, color=OTHER_COLOR)


def _plot_test_accuracy(ax: Axes, cells: list[RecordedCell]) -> None:
    """Each seed's test accuracy, beside the tutorial's number and the stage's minimum."""
    groups = _groups(cells)
    width = 0.6 / max(1, len(groups))
    for index, ((backend, device), members) in enumerate(groups.items()):
        offset = (index - (len(groups) - 1) / 2) * width
        points = [
            (c.seed + offset, 100 * c.metrics["test_accuracy"])
            for c in members
            if "test_accuracy" in c.metrics
        ]
        if points:
            x, y = zip(*points, strict=True)
            ax.scatter(x, y, color=_color(backend), label=f"{backend} {device}", zorder=3)
    expected = next((c.expected for c in cells if c.expected is not None), None)
    tutorial = next(
        (
            c.metrics["tutorial_test_accuracy"]
            for c in cells
            if "tutorial_test_accuracy" in c.metrics
        ),
        expected.tutorial_test_accuracy if expected is not None else None,
    )
    if tutorial is not None:
        ax.axhline(100 * tutorial, color="green", lw=1, label=f"tutorial {100 * tutorial:.2f}%")
    if expected is not None and expected.min_test_accuracy is not None:
        minimum = 100 * expected.min_test_accuracy
        ax.axhline(minimum, color="red", ls="--", lw=1, label=f"minimum {minimum:.2f}%")
    if expected is not None and expected.expect == "does_not_learn":
        ax.set_title("test accuracy per seed (expected: does not learn)", fontsize=9)
    ax.set_xticks(sorted({c.seed for c in cells}))
    ax.set_xlabel("seed")
    ax.set_ylabel("test accuracy (%)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)


def _plot_speed(ax: Axes, cells: list[RecordedCell]) -> None:
    """samples/s per cell: a bar in its backend's colour with its value written on it and its
    p25-p75 whisker, on a linear axis from 0. The roofline (no cell can train faster than its
    device's best matmul rate) is drawn where it fits that axis, else written at the top: on
    a log axis spanning the roof, bars 20% apart showed no difference and no readable tick."""
    from matplotlib.ticker import FuncFormatter

    speeds = [cell.metrics.get("train_samples_per_s") for cell in cells]
    top = max((speed for speed in speeds if speed is not None), default=0.0)
    rotation = 0 if len(cells) <= 4 else 90  # a value across a narrow bar would not fit
    for x, (cell, speed) in enumerate(zip(cells, speeds, strict=True)):
        if speed is None:
            continue
        p25 = cell.metrics.get("train_samples_per_s_p25", speed)
        p75 = cell.metrics.get("train_samples_per_s_p75", speed)
        whisker = [[max(0.0, speed - p25)], [max(0.0, p75 - speed)]]
        ax.bar([x], [speed], color=_color(cell.backend), yerr=whisker, capsize=4, width=0.7)
        ax.text(
            x,
            speed / 2,
            f"{speed:,.0f}",
            ha="center",
            va="center",
            rotation=rotation,
            fontsize=8,
            color="white",
            fontweight="bold",
        )
    ceiling = 1.25 * top if top else 1.0
    notes = []
    for device, roof in _roofs(cells).items():
        if top and roof <= 2 * top:
            ceiling = max(ceiling, 1.1 * roof)
            ax.axhline(roof, color="black", ls=":", lw=1)
        notes.append(
            f"roofline {device}: {roof:,.0f}/s" + (f" ({top / roof:.0%} reached)" if top else "")
        )
    ax.set_ylim(0, ceiling)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
    if not top:  # no axis to read: ticks of 0..1 would be mistaken for values
        ax.set_yticks([])
        _note(ax, "no samples/s: diverged, or under 2 epochs (the first is warm-up)")
    _top_line(ax, "; ".join(notes) or "no peak measured (--no-peak)")
    ax.set_xticks(range(len(cells)), [c.label for c in cells], rotation=30, ha="right", fontsize=7)
    ax.set_xlim(-0.5, len(cells) - 0.5)
    ax.set_ylabel("train samples/s (whisker: p25-p75 of epochs)")


def _roofs(cells: list[RecordedCell]) -> dict[str, float]:
    """Per device, the machine's peak as samples/s."""
    roofs: dict[str, float] = {}
    for cell in cells:
        peak = cell.metrics.get("machine_peak_gflops")
        flops = cell.metrics.get("flops_per_sample")
        if peak and flops:
            roofs[cell.device] = peak * 1e9 / flops
    return roofs


def _top_line(ax: Axes, text: str) -> None:
    """A line of text at the top of a panel, above what is plotted (the ceiling leaves room)."""
    ax.text(
        0.5,
        0.97,
        text,
        transform=ax.transAxes,
        ha="center",
        va="top",
        fontsize=8,
        color=OTHER_COLOR,
    )


def _plot_time(ax: Axes, cells: list[RecordedCell], legend_ax: Axes) -> None:
    """Where each cell's wall time went, phase by phase (stacked); the phases' legend goes in
    `legend_ax`'s free space, where it covers no bar."""
    phases: list[str] = []
    for cell in cells:
        for key in cell.metrics:
            name = key.removeprefix("time_").removesuffix("_seconds")
            timed = key.startswith("time_") and key.endswith("_seconds")
            if timed and name not in _NOT_STACKED and name not in phases:
                phases.append(name)
    colors = _phase_colors(len(phases))
    left = np.zeros(len(cells))
    for phase, color in zip(phases, colors, strict=True):
        widths = np.array([c.metrics.get(f"time_{phase}_seconds", 0.0) for c in cells])
        ax.barh(range(len(cells)), widths, left=left, color=color, label=phase)
        left += widths
    ax.set_yticks(range(len(cells)), [c.label for c in cells], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    if phases:
        handles, labels = ax.get_legend_handles_labels()
        legend_ax.legend(
            handles,
            labels,
            fontsize=7,
            ncol=2,
            loc="lower left",
            title="time breakdown phases",
            title_fontsize=7,
        )
    else:
        _note(ax, "no time breakdown recorded")


def _phase_colors(count: int) -> list[Any]:
    from matplotlib import colormaps

    palette = colormaps["tab20"]
    return [palette(i % 20) for i in range(count)]


def _plot_about(ax: Axes, cells: list[RecordedCell], stage: str) -> None:
    """The stage in words: what it changes and what is expected of it."""
    ax.axis("off")
    spec = next((c.spec for c in cells if c.spec is not None), None)
    lines = [stage]
    if spec is not None:
        lines += textwrap.wrap(spec.description, 60)
        lines.append(f"tutorial: {spec.expected.tutorial}; expected: {spec.expected.describe()}")
        lines.append(f"epochs: {spec.training.epochs}")
    outcomes: dict[str, int] = {}
    for cell in cells:
        outcomes[cell.outcome] = outcomes.get(cell.outcome, 0) + 1
    lines.append("outcomes: " + ", ".join(f"{n} {k}" for k, n in outcomes.items()))
    ax.text(0, 1, "\n".join(lines), va="top", fontsize=8, family="monospace", wrap=True)


def stage_figure(invocation: Invocation, stage: str) -> Figure:
    """One stage's five panels: validation accuracy and training loss per epoch, test accuracy
    per seed, samples/s against the roofline, and the time breakdown."""
    from matplotlib.figure import Figure

    cells = [cell for cell in invocation.cells if cell.stage == stage]
    figure = Figure(figsize=(16, 9), dpi=DPI)
    # Fixed margins: a constrained layout took 40% of the report's time (4.4 of 10.7 s for two
    # stages on a loaded 2-core machine).
    figure.subplots_adjust(left=0.06, right=0.98, top=0.92, bottom=0.12, hspace=0.3, wspace=0.3)
    axes = figure.subplots(2, 3)
    val, loss, test = axes[0]
    speed, timing, about = axes[1]
    _plot_epochs(val, cells, "val_accuracy", 100.0, log=False)
    val.set(title="validation accuracy per epoch", ylabel="validation accuracy (%)")
    _plot_epochs(loss, cells, "train_loss", 1.0, log=True)
    loss.set(title="training loss per epoch", ylabel="mean training loss (log)")
    _plot_test_accuracy(test, cells)
    if not test.get_title():
        test.set_title("test accuracy per seed")
    _plot_speed(speed, cells)
    speed.set_title("throughput against the roofline (machine peak)")
    _plot_time(timing, cells, about)
    timing.set_title("time breakdown per cell")
    _plot_about(about, cells, stage)
    names = [BACKEND_NAMES.get(b, b) for b in dict.fromkeys(c.backend for c in cells)]
    figure.suptitle(f"{stage}: {' vs '.join(names)}, per epoch, seed and cell ({invocation.name})")
    return figure


def figure_png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
