"""The regression test: every stage, every installed backend, the full 30 epochs on CPU.

Each cell must meet its stage file's expectation (a minimum test accuracy, or for relu-normal
that it does not learn). Each runs in its own process, exactly as `python -m bench run` does.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.matrix import LocalExecutor
from bench.runner import Cell, RunOptions, available_cores
from bench.spec import STAGE_NAMES, load_stage
from tests.conftest import backend_params


@pytest.mark.slow
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_stage_meets_its_expectation(
    stage: str, backend: str, data_dir: Path, tmp_path: Path
) -> None:
    spec = load_stage(stage)
    options = RunOptions(data_dir=str(data_dir), threads=available_cores())
    run = LocalExecutor().execute(Cell(stage, backend, "cpu", 0), options, tmp_path, lambda r: None)
    assert run.result is not None, run.error
    result = run.result
    if spec.expected.expect == "min_test_accuracy":
        assert len(result.epochs) == spec.training.epochs
    assert spec.expected.met_by(result.outcome, result.test_accuracy), (
        f"{stage}/{backend}: {result.outcome}, test accuracy {result.test_accuracy:.4f}; "
        f"expected {spec.expected.describe()}"
    )
