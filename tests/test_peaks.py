"""The peak matmul rate: asked of a worker with the cells' options as one object, measured
through the framework there."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from backends import is_installed
from bench.core.options import Options
from bench.core.types import Cell
from bench.execution.matrix import LocalExecutor, cell_request, keras_request
from bench.execution.peaks import (
    attainable_request,
    peak_options,
    peak_request,
    peak_uses_tf32,
)
from tests.conftest import skip_without_gpu

FIELDS = {f.name for f in dataclasses.fields(Options)}
# Options other than the defaults, as an invocation could give them.
ASKED = Options(
    data_dir="d", threads=3, tf32=True, torch_matmul="onednn", dtype="float64", no_xla=True
)


def test_the_peak_is_tf32_only_where_the_cells_may_use_tf32() -> None:
    tf32 = Options(data_dir="d", threads=1, tf32=True)
    assert peak_uses_tf32("gpu", tf32)
    assert not peak_uses_tf32("cpu", tf32)  # CPUs have no TF32
    assert not peak_uses_tf32("gpu", Options(data_dir="d", threads=1))


def test_every_process_is_sent_the_options_as_one_object() -> None:
    """A cell, a peak and a Keras reference each get an Options in their request, and no
    option beside it, so a new option reaches every process without a line here."""
    cell = Cell(stage="relu-xavier", backend="torch", device="cpu", seed=0)
    requests = {
        "cell": cell_request(cell, ASKED, None),
        "peak": peak_request("torch", "gpu", ASKED),
        "attainable": attainable_request("torch", "gpu", ASKED, [[(100, 784, 256)]]),
        "keras": keras_request("torch", "relu-xavier", ASKED, "cpu"),
    }
    for mode, request in requests.items():
        assert not FIELDS & set(request), f"{mode}: {sorted(FIELDS & set(request))} sent loose"
        assert Options(**request["options"]), mode


def test_a_peak_runs_with_the_cells_threads_products_and_tf32_only() -> None:
    sent = Options(**peak_request("torch", "gpu", ASKED)["options"])
    assert sent == peak_options("gpu", ASKED)
    assert (sent.threads, sent.tf32, sent.torch_matmul) == (3, True, "onednn")
    assert sent.nondeterministic and sent.dtype == "float32" and not sent.no_xla
    assert not peak_options("cpu", ASKED).tf32  # CPUs have no TF32


def _peak(device: str, tf32: bool, tmp_path: Path) -> float:
    folder = tmp_path / f"{device}-{tf32}"
    folder.mkdir()
    return LocalExecutor().peak("torch", device, Options(data_dir="", threads=2, tf32=tf32), folder)


@pytest.mark.skipif(not is_installed("torch"), reason="torch not installed")
@pytest.mark.slow
def test_a_peak_is_measured_through_the_worker(tmp_path: Path) -> None:
    """The request reaches the framework in a worker and a rate comes back."""
    assert 0 < _peak("cpu", True, tmp_path) < 1e6


@pytest.mark.gpu
@pytest.mark.skipif(not is_installed("torch"), reason="torch not installed")
def test_the_tf32_peak_is_the_faster_limit_on_a_gpu(tmp_path: Path) -> None:
    skip_without_gpu("torch", "gpu")
    assert _peak("gpu", True, tmp_path) > 1.5 * _peak("gpu", False, tmp_path)


@pytest.mark.skipif(not is_installed("torch"), reason="torch not installed")
@pytest.mark.slow
def test_the_step_products_are_timed_through_the_worker(tmp_path: Path) -> None:
    """Two lists of products in one worker: a step's seconds each, the longer list longer."""
    small, large = [(100, 256, 256)], [(100, 256, 256), (100, 784, 256), (784, 100, 256)]
    options = Options(data_dir="", threads=1)
    seconds = LocalExecutor().attainable("torch", "cpu", options, [small, large], tmp_path)
    assert len(seconds) == 2 and 0 < seconds[0] < seconds[1] < 1
