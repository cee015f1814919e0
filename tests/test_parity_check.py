"""Cross-framework parity: the same function, step by step, in float32 and float64."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from backends import installed_backends
from bench.core.devices import available_cores
from bench.core.spec import STAGE_NAMES, load_stage
from bench.execution.matrix import LocalExecutor
from bench.execution.parity_check import (
    ParityReport,
    parity_options,
    relative_difference,
    run_parity,
    weights_difference,
)
from tests.conftest import mnist_dir

pytestmark = pytest.mark.skipif(
    len(installed_backends()) < 2, reason="parity needs two backends or more"
)


# Each parametrized test's reports, keyed by (stage, steps, dtype, accumulate): a failure to
# train is kept as its exception, raised in that stage's own test.
_reports: dict[tuple[str, int, str, str], list[ParityReport] | Exception] = {}


def _parity(
    stage: str,
    steps: int,
    dtype: str,
    accumulate: str = "float64",
    data_dir: Path | None = None,
    together: Sequence[str] = (),
) -> list[ParityReport]:
    """Every installed backend trained once; one report per pair of them. The stages
    `together` (the test's other parameters) are trained at the same time, side by side on
    the cores: on two cores, two one-thread runs at a time finish far sooner than one
    two-thread run after another, whose start-up keeps one core waiting."""
    stages = [stage, *(other for other in together if other != stage)]
    if (stage, steps, dtype, accumulate) not in _reports:
        workers = min(len(stages), available_cores())
        threads = max(1, available_cores() // workers)
        train = partial(_pairs, steps=steps, dtype=dtype, accumulate=accumulate)
        train = partial(train, data_dir=data_dir, threads=threads)
        with ThreadPoolExecutor(workers) as pool:
            for name, reports in zip(stages, pool.map(train, stages), strict=True):
                _reports[(name, steps, dtype, accumulate)] = reports
    reports = _reports[(stage, steps, dtype, accumulate)]
    if isinstance(reports, Exception):
        raise reports
    backends = len(installed_backends())
    assert len(reports) == backends * (backends - 1) // 2
    return reports


def _pairs(
    stage: str, steps: int, dtype: str, accumulate: str, data_dir: Path | None, threads: int
) -> list[ParityReport] | Exception:
    """The stage's reports, or the exception that stopped them."""
    spec = load_stage(stage)
    folder = str(data_dir or mnist_dir())
    options = parity_options(folder, threads, steps, dtype, spec, accumulate)  # type: ignore[arg-type]
    try:
        return run_parity(stage, "cpu", 0, options, LocalExecutor(), installed_backends())
    except Exception as error:
        return error


@pytest.mark.parametrize("stage", STAGE_NAMES)
@pytest.mark.slow
def test_float64_parity_over_a_whole_epoch(stage: str) -> None:
    for report in _parity(stage, 550, "float64", together=STAGE_NAMES):
        assert report.steps == 550
        assert report.passed, report.describe()
        assert report.measured <= 1e-9


@pytest.mark.slow
def test_float64_parity_on_fashion_mnist(both_data_dir: Path) -> None:
    """The frameworks agree on the second data set as on MNIST: one stage of it, its first 200
    steps (the whole-epoch checks above are MNIST's; the data set changes only the arrays)."""
    for report in _parity("fashion-relu-xavier", 200, "float64", data_dir=both_data_dir):
        assert report.steps == 200
        assert report.passed, report.describe()
        assert report.measured <= 1e-9


@pytest.mark.parametrize("stage", STAGE_NAMES)
@pytest.mark.slow
def test_float32_parity_over_the_first_steps(stage: str) -> None:
    for report in _parity(stage, 50, "float32", together=STAGE_NAMES):
        assert report.steps == 50
        assert report.passed, report.describe()


NATIVE_STAGES = ("relu-xavier", "dropout")


@pytest.mark.parametrize("stage", NATIVE_STAGES)
@pytest.mark.slow
def test_float32_parity_in_the_native_kernels(stage: str) -> None:
    """The frameworks' own float32 kernels sum in different orders (~1e-7 apart); SGD from
    Glorot weights keeps that below the tolerance (Adam at lr 0.01 and N(0, 1) weights
    amplify it past 1e-5 within 50 steps: the output shows where)."""
    for report in _parity(stage, 50, "float32", "native", together=NATIVE_STAGES):
        assert report.windows[1] <= 1e-6  # the same initial weights and first batch
        assert report.passed, report.describe()


def test_relative_difference_treats_equal_non_finite_values_as_equal() -> None:
    a = np.array([1.0, np.nan, np.inf, 2.0, np.nan])
    b = np.array([1.0, np.nan, np.inf, 2.0 + 2e-6, 1.0])
    np.testing.assert_allclose(relative_difference(a, b), [0, 0, 0, 1e-6 / 1.000001, np.inf])
    assert weights_difference([a[:1]], [b[:1]]) == 0.0
    assert weights_difference([np.array([np.nan])], [np.array([1.0])]) == np.inf
