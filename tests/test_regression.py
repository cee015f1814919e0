"""The regression test: every stage, every installed backend, the full 30 epochs on CPU.

Each cell must meet its stage file's expectation (a minimum test accuracy, or for relu-normal
that it does not learn), and every pair of frameworks' mean accuracies per stage must agree
within what their seed-to-seed noise allows. Cells run in their own processes, as `bench run`
runs them.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from backends import BACKENDS, is_installed
from bench.core.devices import available_cores
from bench.core.options import Options
from bench.core.spec import STAGE_NAMES, load_stage
from bench.core.types import Cell, CellResult, CellRun
from bench.execution.matrix import LocalExecutor
from bench.recording.stats import summarize
from tests.conftest import backend_params, mnist_dir

# Two seeds a cell: every seed must meet the stage's minimum, and the seed-to-seed noise is
# pooled over the stage's backends (below). A third seed cost CI four minutes.
SEEDS = (0, 1)
# Two means differ "by more than their noise allows" past the two-sided 99.9% Student t bound
# on the pooled noise's degrees of freedom (backends x (seeds - 1)).
CONFIDENCE = 0.999

pytestmark = pytest.mark.slow
_cache: dict[tuple[str, str], list[CellRun]] = {}


def results(stage: str, backend: str) -> list[CellResult]:
    """The stage's cells on this backend over SEEDS, run once per test session."""
    if (stage, backend) not in _cache:
        _run_stage(stage)
    runs = _cache[(stage, backend)]
    for run in runs:
        assert run.result is not None, f"{run.cell.name}: {run.error}"
    return [run.result for run in runs if run.result is not None]


def _run_stage(stage: str) -> None:
    """The stage's cells on every installed backend, each in its own worker process as `bench
    run` runs them, side by side with the cores shared out between them: on CI's two cores,
    two one-thread cells at a time finish far sooner than one two-thread cell after another,
    whose start-up (imports, data) and evaluation keep one core waiting."""
    # A stage expected not to learn (relu-normal) diverges within its first epoch on every
    # seed, its weights' scale and not the seed making it: one seed shows it, and its cells
    # take no part in the agreement test below.
    learns = load_stage(stage).expected.expect == "min_test_accuracy"
    backends = [name for name in BACKENDS if is_installed(name)]
    cells = [
        Cell(stage, name, "cpu", seed) for name in backends for seed in SEEDS[: 2 if learns else 1]
    ]
    workers = min(len(cells), available_cores())
    options = Options(data_dir=str(mnist_dir()), threads=max(1, available_cores() // workers))
    with ThreadPoolExecutor(workers) as pool:
        runs = list(pool.map(partial(_cell_run, options), cells))
    for name in backends:
        _cache[(stage, name)] = [run for run in runs if run.cell.backend == name]


def _cell_run(options: Options, cell: Cell) -> CellRun:
    with tempfile.TemporaryDirectory(prefix="mlp-bench-regression-") as tmp:
        return LocalExecutor().execute(cell, options, Path(tmp), lambda record: None)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_stage_meets_its_expectation_on_every_seed(stage: str, backend: str) -> None:
    expected = load_stage(stage).expected
    for result in results(stage, backend):
        if expected.expect == "min_test_accuracy":
            assert len(result.epochs) == load_stage(stage).training.epochs
        assert expected.met_by(result.outcome, result.test_accuracy), (
            f"{result.cell.name}: {result.outcome}, test accuracy {result.test_accuracy:.4f}; "
            f"expected {expected.describe()}"
        )


def backend_pairs() -> list[object]:
    """Every pair of registered backends; a pair with one framework missing is skipped."""
    return [
        pytest.param(
            pair,
            id="-vs-".join(pair),
            marks=pytest.mark.skipif(
                not all(is_installed(name) for name in pair), reason="needs both of the pair"
            ),
        )
        for pair in itertools.combinations(BACKENDS, 2)
    ]


def pooled_noise(stage: str) -> tuple[float, int]:
    """The seed-to-seed standard deviation of the stage's test accuracy, pooled over every
    installed backend (the same experiment on each framework: one noise, better estimated
    from all of them than from two seeds of one), and its degrees of freedom."""
    groups = [
        np.array([r.test_accuracy for r in results(stage, name)])
        for name in BACKENDS
        if is_installed(name)
    ]
    squares = sum(float(((g - g.mean()) ** 2).sum()) for g in groups)
    dof = sum(g.size - 1 for g in groups)
    return math.sqrt(squares / dof), dof


@pytest.mark.parametrize("pair", backend_pairs())
@pytest.mark.parametrize("stage", [s for s in STAGE_NAMES if s != "relu-normal"])
def test_frameworks_agree_within_seed_noise(stage: str, pair: tuple[str, str]) -> None:
    a, b = (summarize([r.test_accuracy for r in results(stage, name)]) for name in pair)
    assert a is not None and b is not None
    gap = abs(a.mean - b.mean)
    std, dof = pooled_noise(stage)
    bound = float(scipy.stats.t.ppf(0.5 + CONFIDENCE / 2, dof))
    # Floor: one test image (0.01 points), so identical runs on both sides cannot divide by 0.
    allowed = bound * max(std * math.sqrt(1 / a.n + 1 / b.n), 1e-4)
    assert gap <= allowed, (
        f"{stage}: {pair[0]} {100 * a.mean:.2f}% vs {pair[1]} {100 * b.mean:.2f}% differ by "
        f"{100 * gap:.2f} points; their noise allows {100 * allowed:.2f}"
    )
