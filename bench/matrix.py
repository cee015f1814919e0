"""The matrix: the product of cells, each run in its own process, recorded as it goes.

Executors plug in here: `LocalExecutor` runs cells one at a time on this machine, which is what a
clean timing needs; a cluster executor (Ray) would implement the same `execute` method.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from bench.runner import Cell, CellResult, EpochRecord, RunOptions
from bench.stats import outcome_counts, summarize


def build_cells(
    stages: Iterable[str], backends: Iterable[str], devices: Iterable[str], seeds: Iterable[int]
) -> list[Cell]:
    """Every combination, stage-major, so the table groups by stage."""
    return [
        Cell(stage=s, backend=b, device=d, seed=seed)  # type: ignore[arg-type]
        for s, b, d, seed in itertools.product(stages, backends, devices, seeds)
    ]


@dataclass
class CellRun:
    """What executing a cell produced: a result, or an error message and the log."""

    cell: Cell
    result: CellResult | None
    error: str | None
    wall_seconds: float
    log_path: Path


class Executor(Protocol):
    def execute(
        self,
        cell: Cell,
        options: RunOptions,
        work_dir: Path,
        on_epoch: Callable[[EpochRecord], None],
        stage_text: str | None = None,
    ) -> CellRun:
        """Run one cell; `stage_text` replaces the named stage file (reproducing a record)."""
        ...


class LocalExecutor:
    """Runs a cell as `python -m bench.worker` and streams its events."""

    def execute(
        self,
        cell: Cell,
        options: RunOptions,
        work_dir: Path,
        on_epoch: Callable[[EpochRecord], None],
        stage_text: str | None = None,
    ) -> CellRun:
        request = work_dir / "request.json"
        request.write_text(
            json.dumps(
                {
                    "cell": asdict(cell),
                    "options": asdict(options),
                    "out_dir": str(work_dir),
                    "stage_text": stage_text,
                }
            )
        )
        log_path = work_dir / "worker.log"
        start = time.perf_counter()
        error = None
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "bench.worker", str(request)],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
            try:
                assert process.stdout is not None
                for line in process.stdout:
                    event = json.loads(line)
                    if event["type"] == "epoch":
                        on_epoch(EpochRecord(**{k: v for k, v in event.items() if k != "type"}))
                    elif event["type"] == "error":
                        error = event["message"]
                code = process.wait()
            except BaseException:  # interrupted: never leave the worker running
                process.kill()
                process.wait()
                raise
        wall = time.perf_counter() - start
        result_path = work_dir / "result.json"
        if code == 0 and result_path.exists():
            result = CellResult.load(json.loads(result_path.read_text()), work_dir)
            return CellRun(cell, result, None, wall, log_path)
        return CellRun(cell, None, error or _crash_message(code, log_path), wall, log_path)


def _crash_message(code: int, log_path: Path) -> str:
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    last = lines[-1].strip() if lines else "no output"
    return f"worker exited with code {code}: {last[:300]} (full log: worker.log artifact)"


class CellObserver(Protocol):
    """Progress display and recording hooks around each cell."""

    def cell_started(self, index: int, total: int, cell: Cell) -> None: ...
    def epoch(self, cell: Cell, record: EpochRecord, epochs: int) -> None: ...
    def cell_finished(self, run: CellRun) -> None: ...


class CellTracker(Protocol):
    def start_cell(self, cell: Cell) -> str: ...
    def log_epoch(self, run_id: str, record: EpochRecord) -> None: ...
    def finish_cell(self, run_id: str, run: CellRun) -> None: ...
    def end(self, run_id: str, status: str) -> None: ...


def run_matrix(
    cells: list[Cell],
    options: RunOptions,
    executor: Executor,
    tracker: CellTracker,
    observer: CellObserver,
    epochs_of: Callable[[Cell], int],
) -> list[CellRun]:
    """Run every cell in order; record each in MLflow; end each run with its true status."""
    runs = []
    for index, cell in enumerate(cells, start=1):
        observer.cell_started(index, len(cells), cell)
        run_id = tracker.start_cell(cell)
        try:
            with tempfile.TemporaryDirectory(prefix="mlp-bench-") as tmp:

                def on_epoch(record: EpochRecord, cell: Cell = cell, run_id: str = run_id) -> None:
                    tracker.log_epoch(run_id, record)
                    observer.epoch(cell, record, epochs_of(cell))

                run = executor.execute(cell, options, Path(tmp), on_epoch)
                tracker.finish_cell(run_id, run)
        except BaseException:
            tracker.end(run_id, "KILLED")
            raise
        observer.cell_finished(run)
        runs.append(run)
    return runs


def group_metrics(runs: list[CellRun]) -> dict[str, float]:
    """Statistics over a group's seeds: accuracy and speed summaries, outcome counts."""
    results = [run.result for run in runs if run.result is not None]
    metrics: dict[str, float] = {}
    for name in ("test_accuracy", "train_samples_per_s"):
        values = [getattr(r, name) for r in results if getattr(r, name) is not None]
        summary = summarize(values)
        if summary is not None:
            metrics.update(summary.metrics(name))
    outcomes = [r.outcome for r in results] + ["failed"] * (len(runs) - len(results))
    metrics.update({f"outcome_{k}": float(v) for k, v in outcome_counts(outcomes).items()})
    return metrics
