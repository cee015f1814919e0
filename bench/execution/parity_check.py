"""Parity check: every backend trains the same stage from the same seed, step by step, and
every pair of them is compared.

In parity mode the dropout masks come from numpy and the optimizer updates are written out op by
op in the same order in every backend, so any difference is floating-point rounding (matmul
summation order, library kernels) and how chaos amplifies it. In float32 the products, sums and
loss are by default computed in float64 and rounded once (Options.accumulate), so that
the check sees the float32 parameters, gradients and updates, not the kernels' summation order;
`accumulate="native"` shows how the frameworks' own float32 kernels drift apart.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from backends.base import steps_per_epoch
from bench.core.errors import BenchError
from bench.core.options import Options
from bench.core.spec import StageSpec
from bench.core.types import Cell, CellResult, DType
from bench.execution.matrix import Executor, run_alone

# (window of first steps, largest relative loss difference allowed there), per dtype.
TOLERANCES: dict[str, tuple[int, float]] = {"float32": (50, 1e-5), "float64": (550, 1e-9)}
WINDOWS = (1, 10, 50)


@dataclass(frozen=True)
class ParityReport:
    stage: str
    dtype: DType
    accumulate: Literal["float64", "native"]
    device: str
    seed: int
    losses: dict[str, np.ndarray]  # backend -> per-step losses
    rel_diff: np.ndarray  # per step: |a - b| / |b|; 0 where both are non-finite alike
    weight_rel_diff: float  # largest over parameters of max|a - b| / max|b|, at the end
    window: int  # the first steps the tolerance applies to
    tolerance: float

    @property
    def steps(self) -> int:
        return len(self.rel_diff)

    def max_within(self, first: int) -> float:
        return float(np.max(self.rel_diff[:first])) if first else 0.0

    @property
    def windows(self) -> dict[int, float]:
        firsts = sorted({w for w in (*WINDOWS, self.steps) if w <= self.steps})
        return {w: self.max_within(w) for w in firsts}

    @property
    def checked(self) -> int:
        """The first steps the tolerance was held against: the window, or fewer if fewer ran."""
        return min(self.window, self.steps)

    @property
    def measured(self) -> float:
        return self.max_within(self.checked)

    @property
    def passed(self) -> bool:
        return self.measured <= self.tolerance

    @property
    def precision(self) -> str:
        """The dtype, and for float32 how its products and sums were computed."""
        if self.dtype == "float64":
            return "float64"
        kernels = "float64, rounded once" if self.accumulate == "float64" else "native kernels"
        return f"float32 ({kernels})"

    def describe(self) -> str:
        rows = [
            f"parity {self.stage}  {self.precision}  {self.device}  seed {self.seed}: "
            f"{' vs '.join(self.losses)}, {self.steps} steps",
            "  largest relative loss difference within the first N steps:",
        ]
        rows += [f"    N = {first:>5}: {value:.3e}" for first, value in self.windows.items()]
        rows.append(f"  final weights, largest relative difference: {self.weight_rel_diff:.3e}")
        if math.isinf(self.weight_rel_diff):
            rows.append(
                "    (non-finite in one backend where the other has a number: after a divergence"
                " the frameworks' kernels spread NaN differently)"
            )
        first_bad = _first_above(self.rel_diff, self.tolerance)
        if first_bad is not None:
            rows.append(f"  differences first exceed {self.tolerance:.0e} at step {first_bad}")
        verdict = "PASS" if self.passed else "FAIL"
        rows.append(
            f"  tolerance: first {self.checked} steps <= {self.tolerance:.0e}: "
            f"{self.measured:.3e} -> {verdict}"
        )
        return "\n".join(rows)


def _first_above(values: np.ndarray, bound: float) -> int | None:
    above = np.flatnonzero(values > bound)
    return int(above[0]) + 1 if above.size else None


def relative_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| / |b| per element; equal non-finite values (both NaN, same inf) count as 0."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    same = (a64 == b64) | (np.isnan(a64) & np.isnan(b64))
    with np.errstate(divide="ignore", invalid="ignore"):
        diff = np.abs(a64 - b64) / np.maximum(np.abs(b64), np.finfo(np.float64).tiny)
    return np.where(same, 0.0, np.nan_to_num(diff, nan=np.inf))


def weights_difference(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Largest over parameters of max|a - b| / max|b|; NaN where the other is not NaN is inf."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        same = (x64 == y64) | (np.isnan(x64) & np.isnan(y64))
        if same.all():
            continue
        scale = float(np.max(np.abs(y64[np.isfinite(y64)]), initial=0.0)) or 1.0
        gap = float(np.max(np.abs(x64 - y64)[~same]))
        worst = max(worst, gap / scale if math.isfinite(gap) else math.inf)
    return worst


def compare(stage: str, options: Options, results: dict[str, CellResult]) -> ParityReport:
    """Compare two runs (named by backend, or by backend/device) of the same stage and seed."""
    if len(results) != 2:
        raise ValueError(f"parity compares two runs at a time, not {len(results)}")
    first, second = results.values()
    n = min(len(first.step_losses), len(second.step_losses))
    window, tolerance = TOLERANCES[options.dtype]
    return ParityReport(
        stage=stage,
        dtype=options.dtype,
        accumulate=options.accumulate,
        device=first.cell.device,
        seed=first.cell.seed,
        losses={name: result.step_losses for name, result in results.items()},
        rel_diff=relative_difference(first.step_losses[:n], second.step_losses[:n]),
        weight_rel_diff=weights_difference(first.parameters, second.parameters),
        window=window,
        tolerance=tolerance,
    )


def parity_options(
    data_dir: str,
    threads: int,
    steps: int,
    dtype: DType,
    spec: StageSpec,
    accumulate: Literal["float64", "native"] = "float64",
) -> Options:
    """Parity mode, deterministic, stopping after `steps` of the stage (epochs enough for
    them over its data set's training split), keeping the final weights."""
    train_size = spec.dataset.split.train.size
    epochs = math.ceil(steps / steps_per_epoch(train_size, spec.training.batch_size))
    return Options(
        data_dir=data_dir,
        threads=threads,
        epochs=epochs,
        parity=True,
        dtype=dtype,
        accumulate=accumulate,
        steps=steps,
        keep_parameters=True,
    )


def run_parity(
    stage: str,
    device: str,
    seed: int,
    options: Options,
    executor: Executor,
    backends: Sequence[str],
) -> list[ParityReport]:
    """Train each backend once, in its own process, then compare every pair of them."""
    if len(backends) < 2:
        raise BenchError(
            f"parity compares backends, and only {', '.join(backends) or 'none'} is installed;"
            " install a second (nox -s bench installs every one)"
        )
    results: dict[str, CellResult] = {}
    for backend in backends:
        run = run_alone(Cell(stage, backend, device, seed), options, executor)  # type: ignore[arg-type]
        if run.result is None:
            raise BenchError(f"parity: the {backend} run failed: {run.error}")
        results[backend] = run.result
    return [
        compare(stage, options, {a: results[a], b: results[b]})
        for a, b in itertools.combinations(backends, 2)
    ]


def write_curve(report: ParityReport, folder: Path) -> list[Path]:
    """The difference curve as CSV, and as a PNG plot."""
    csv_path = folder / "parity_curve.csv"
    names = list(report.losses)
    lines = [f"step,loss_{names[0]},loss_{names[1]},rel_diff"]
    for i in range(report.steps):
        a, b = (float(report.losses[name][i]) for name in names)
        lines.append(f"{i + 1},{a!r},{b!r},{float(report.rel_diff[i])!r}")
    csv_path.write_text("\n".join(lines) + "\n")
    return [csv_path, _plot(report, folder / "parity_curve.png")]


def _plot(report: ParityReport, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    steps = np.arange(1, report.steps + 1)
    floor = np.finfo(np.float64).eps / 2
    a, b = report.losses
    label = f"|{a} - {b}| / |{b}|"
    ax.semilogy(steps, np.maximum(report.rel_diff, floor), lw=0.8, label=label)
    ax.axhline(report.tolerance, color="red", ls="--", label=f"tolerance {report.tolerance:.0e}")
    ax.axvline(report.checked, color="gray", ls=":", label=f"first {report.checked} steps")
    ax.set(
        xlabel="step",
        ylabel="relative loss difference",
        title=f"parity {report.stage} {report.precision} {report.device} seed {report.seed}",
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
