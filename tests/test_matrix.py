"""Cells in their own processes, and how their ends are recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends import installed_backends
from bench.core.options import Options
from bench.core.spec import load_stage, with_epochs
from bench.core.types import Cell, CellRun, EpochRecord
from bench.execution.matrix import LocalExecutor, build_cells, run_matrix
from bench.recording.tables import Progress, results_table
from bench.recording.tracking import MatrixRecord, Tracker
from tests.conftest import mnist_dir


def test_cells_are_the_product_stage_major() -> None:
    cells = build_cells(["adam", "dropout"], ["torch", "tensorflow"], ["cpu"], [0, 1])
    assert len(cells) == 8
    assert [c.stage for c in cells[:4]] == ["adam"] * 4
    assert cells[0] == Cell("adam", "torch", "cpu", 0)
    assert cells[0].name == "adam/torch/cpu/seed0"


@pytest.fixture
def tracker(tmp_path: Path) -> Tracker:
    return Tracker(f"sqlite:///{tmp_path}/mlflow.db", "matrix-test")


def _record(
    tracker: Tracker, stage: str, epochs: int, cells: list[Cell], options: Options
) -> MatrixRecord:
    parent = tracker.start_parent("test", {}, {})
    specs = {stage: with_epochs(load_stage(stage), epochs)}
    return MatrixRecord(tracker, parent, specs, cells, options)


@pytest.mark.slow
def test_a_cell_runs_in_its_own_process_and_streams_epochs(
    tracker: Tracker, tmp_path: Path
) -> None:
    backend = installed_backends()[0]
    cells = [Cell("relu-xavier", backend, "cpu", 0)]
    options = Options(data_dir=str(mnist_dir()), threads=2, epochs=2)
    record = _record(tracker, "relu-xavier", 2, cells, options)
    seen: list[EpochRecord] = []

    class Observer(Progress):
        def epoch(self, cell: Cell, rec: EpochRecord, epochs: int) -> None:
            seen.append(rec)

    runs = run_matrix(cells, options, LocalExecutor(), record, Observer(), lambda cell: 2)
    result = runs[0].result
    assert result is not None and runs[0].error is None
    assert [r.epoch for r in seen] == [1, 2] and result.epochs == seen
    assert result.step_losses.shape == (1100,)
    assert result.train_samples_per_s == pytest.approx(55000 / result.epochs[1].epoch_seconds)
    assert [e.steps for e in result.epochs] == [550, 550]
    assert {"framework_import", "data_load", "build", "train", "evaluate"} <= set(result.timings)
    assert result.environment["framework"] == backend
    table = results_table(runs, {"relu-xavier": load_stage("relu-xavier")})
    assert "relu-xavier" in table and "98.02%" in table
    # The minimum was set for 30 epochs: a 2-epoch run is not judged against it.
    short = results_table(runs, {"relu-xavier": with_epochs(load_stage("relu-xavier"), 2)})
    assert "n/a (2 of 30 epochs)" in short and " NO " not in short


@pytest.mark.slow
def test_a_failing_cell_is_recorded_failed_with_its_message(
    tracker: Tracker, tmp_path: Path
) -> None:
    backend = installed_backends()[0]
    cell = Cell("adam", backend, "cpu", 0)
    empty = tmp_path / "no-data"
    empty.mkdir()
    options = Options(data_dir=str(empty), threads=2, epochs=1)
    record = _record(tracker, "adam", 1, [cell], options)
    runs = run_matrix([cell], options, LocalExecutor(), record, Progress(), lambda c: 1)
    assert runs[0].result is None
    assert runs[0].error is not None and "train-images-idx3-ubyte.gz" in runs[0].error
    client = tracker._client
    [run] = client.search_runs(
        [tracker.experiment_id], filter_string="tags.stage = 'adam' and tags.kind = 'cell'"
    )
    assert run.info.status == "FAILED"
    assert "train-images-idx3-ubyte.gz" in run.data.tags["error"]
    assert "worker.log" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_an_interrupted_matrix_ends_the_cell_killed(tracker: Tracker, tmp_path: Path) -> None:
    class Interrupted:
        def execute(self, *args: object) -> CellRun:
            raise KeyboardInterrupt

    cell = Cell("dropout", "torch", "cpu", 0)
    options = Options("x", 1)
    record = _record(tracker, "dropout", 1, [cell], options)
    with pytest.raises(KeyboardInterrupt):
        run_matrix([cell], options, Interrupted(), record, Progress(), lambda c: 1)
    record.close("KILLED")
    runs = tracker._client.search_runs([tracker.experiment_id], "tags.stage = 'dropout'")
    assert [r.info.status for r in runs] == ["KILLED"]  # the cell (one seed: no group run)


CUDA_TRACEBACK = """\
some library banner
Traceback (most recent call last):
  File "/x/bench/execution/worker.py", line 90, in main
    _run_cell(request, events)
  File "/x/backends/torch.py", line 300, in train_epoch
    return torch.stack(step_losses).cpu().numpy()
           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
RuntimeError: CUDA error: an illegal memory access was encountered
CUDA kernel errors might be asynchronously reported at some other API call.
For debugging consider passing CUDA_LAUNCH_BLOCKING=1
Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.

"""


def test_a_crash_is_described_by_its_exception_line_not_the_last_hint(tmp_path: Path) -> None:
    from bench.execution.matrix import _crash_message, exception_line

    expected = "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert exception_line(CUDA_TRACEBACK) == expected
    chained = CUDA_TRACEBACK + "\nDuring handling...\n\nTraceback (most recent call last):\n"
    chained += '  File "x.py", line 1\nMemoryError: out of memory\nhint\n'
    assert exception_line(chained) == "MemoryError: out of memory"
    assert exception_line("Segmentation fault\n") == "Segmentation fault"
    assert exception_line("") == "no output"
    log = tmp_path / "worker.log"
    log.write_text(CUDA_TRACEBACK)
    assert _crash_message(-11, log) == f"worker killed by signal 11 (SIGSEGV): {expected}"
    assert _crash_message(1, log) == f"worker exited with code 1: {expected}"


def test_a_worker_reports_an_exception_by_type_and_first_line() -> None:
    from bench.execution.worker import describe

    error = RuntimeError("\nCUDA error: out of memory\nCompile with `TORCH_USE_CUDA_DSA`")
    assert describe(error) == "RuntimeError: CUDA error: out of memory"
    assert describe(MemoryError()) == "MemoryError"
