"""Bitwise reruns: same backend, device, seed and versions give identical losses and accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backends import is_installed
from bench.core.options import Options
from bench.core.spec import STAGE_NAMES
from bench.core.types import Cell, CellResult
from bench.execution.matrix import LocalExecutor
from tests.conftest import (
    FASHION_DATA_SHA256,
    backend_params,
    device_params,
    mnist_dir,
    skip_without_gpu,
)

# Steps of the Fashion-MNIST reruns: enough for dropout-free SGD to move every weight.
FASHION_STEPS = 200


def _run(cell: Cell, tmp_path: Path, name: str, **options_: Any) -> CellResult:
    work = tmp_path / name
    work.mkdir()
    options = Options(**{"data_dir": str(mnist_dir()), "threads": 2, "epochs": 2, **options_})
    run = LocalExecutor().execute(cell, options, work, lambda record: None)
    assert run.result is not None, run.error
    return run.result


@pytest.mark.parametrize("device", device_params())
@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("stage", STAGE_NAMES)
@pytest.mark.slow
def test_two_runs_are_bit_identical(stage: str, backend: str, device: str, tmp_path: Path) -> None:
    skip_without_gpu(backend, device)
    cell = Cell(stage, backend, device, 3)  # type: ignore[arg-type]
    first, second = _run(cell, tmp_path, "first"), _run(cell, tmp_path, "second")
    assert first.step_losses.tobytes() == second.step_losses.tobytes()
    assert first.test_accuracy == second.test_accuracy
    assert [e.val_accuracy for e in first.epochs] == [e.val_accuracy for e in second.epochs]
    assert first.environment["deterministic_ops"] == "true"
    if stage != "relu-normal":
        assert np.isfinite(first.step_losses).all()


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.slow
def test_two_runs_on_fashion_mnist_are_bit_identical(
    backend: str, both_data_dir: Path, tmp_path: Path
) -> None:
    """Reruns are bit-identical on the second data set too: one stage of it, CPU, its first
    FASHION_STEPS steps (the data set changes the arrays, not the code path that the MNIST
    reruns above cover a whole epoch of), final weights included."""
    cell = Cell("fashion-relu-xavier", backend, "cpu", 3)
    first, second = (
        _run(
            cell,
            tmp_path,
            name,
            epochs=1,
            steps=FASHION_STEPS,
            keep_parameters=True,
            data_dir=str(both_data_dir),
        )
        for name in ("a", "b")
    )
    assert len(first.step_losses) == FASHION_STEPS
    assert first.step_losses.tobytes() == second.step_losses.tobytes()
    assert [p.tobytes() for p in first.parameters] == [p.tobytes() for p in second.parameters]
    assert first.test_accuracy == second.test_accuracy
    assert first.environment["data_sha256"] == FASHION_DATA_SHA256
    assert np.isfinite(first.step_losses).all()


@pytest.mark.skipif(not is_installed("torch"), reason="torch not installed")
@pytest.mark.parametrize("stage", ["adam", "dropout"])
@pytest.mark.slow
def test_onednn_products_rerun_bit_identical(stage: str, tmp_path: Path) -> None:
    """PyTorch's products through oneDNN keep reruns bit-identical."""
    cell = Cell(stage, "torch", "cpu", 3)
    first, second = (
        _run(cell, tmp_path, name, epochs=1, torch_matmul="onednn") for name in ("a", "b")
    )
    assert first.environment["torch_matmul"] == "onednn"
    assert first.step_losses.tobytes() == second.step_losses.tobytes()
    assert first.test_accuracy == second.test_accuracy
