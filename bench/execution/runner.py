"""One cell (stage x backend x device x seed): load, build, timed epochs, evaluation.

Imports no framework itself: the backend is loaded by name. Runs inside the cell's own process
(see bench.execution.worker); the parent only sees the events and the result it emits.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from backends.base import Backend
from bench.core.devices import available_cores, cpu_isa, cpu_model
from bench.core.options import Options
from bench.core.provenance import git_state
from bench.core.seeding import SeededRun
from bench.core.spec import StageSpec, load_stage, with_epochs
from bench.core.types import (
    LEARNED_ACCURACY,
    Cell,
    CellResult,
    EpochRecord,
    Outcome,
)


def steady_rates(epochs: list[EpochRecord], batch_size: int) -> list[float]:
    """Samples/s of each epoch after the first (tracing and compilation stay out)."""
    return [e.steps * batch_size / e.epoch_seconds for e in epochs[1:]]


def steady_throughput(epochs: list[EpochRecord], batch_size: int) -> float | None:
    """The median of the steady epochs' samples/s."""
    rates = steady_rates(epochs, batch_size)
    return float(np.median(rates)) if rates else None


def throughput_spread(epochs: list[EpochRecord], batch_size: int) -> dict[str, float]:
    """Min, quartiles and max of the steady epochs' samples/s: how noisy the median is."""
    rates = steady_rates(epochs, batch_size)
    if not rates:
        return {}
    p25, p75 = np.percentile(rates, [25, 75])
    return {"min": min(rates), "p25": float(p25), "p75": float(p75), "max": max(rates)}


def classify(losses_finite: bool, test_accuracy: float) -> Outcome:
    if not losses_finite:
        return "diverged"
    return "converged" if test_accuracy >= LEARNED_ACCURACY else "did-not-learn"


class _Clock:
    """Accumulates wall time per phase of a cell."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self.timings[phase] = self.timings.get(phase, 0.0) + now - self._start
        self._start = now


def run_cell(
    cell: Cell,
    options: Options,
    on_epoch: Callable[[EpochRecord], None] = lambda record: None,
    spec: StageSpec | None = None,
) -> CellResult:
    """Run one cell in this process and return its result."""
    from backends import load_backend  # lazily: importing a backend imports its framework
    from bench.core.data import load_dataset
    from bench.core.seeding import seeded_run

    clock = _Clock()
    spec = with_epochs(spec or load_stage(cell.stage), options.epochs)
    # Read the data on a second thread while the framework imports (seconds of mostly
    # single-threaded Python): "data_load" is then only the wait after the import.
    with ThreadPoolExecutor(max_workers=1) as pool:
        loading = pool.submit(load_dataset, spec.dataset, Path(options.data_dir), download=False)
        backend_cls = load_backend(cell.backend)
        clock.lap("framework_import")
        splits = loading.result()
    run = seeded_run(spec, cell.seed, splits.train_x.shape[0])
    clock.lap("data_load")
    backend = backend_cls(cell.device, options)
    backend.load_data(splits)
    backend.build(spec, run)
    clock.lap("build")
    records, losses, diverged_step = _train(backend, spec, run, options, on_epoch, clock)
    test_accuracy = backend.accuracy("test")
    clock.lap("evaluate")
    return CellResult(
        cell=cell,
        outcome=classify(diverged_step is None, test_accuracy),
        test_accuracy=test_accuracy,
        train_samples_per_s=steady_throughput(records, spec.training.batch_size),
        spread=throughput_spread(records, spec.training.batch_size),
        memory=_memory(backend),
        epochs=records,
        environment=_environment(backend.environment(), options, splits.sha256),
        timings=clock.timings,
        diverged_step=diverged_step,
        step_losses=losses,
        parameters=backend.parameters() if options.keep_parameters else [],
        dataset=spec.data.dataset,
    )


def _train(
    backend: Backend,
    spec: StageSpec,
    run: SeededRun,
    options: Options,
    on_epoch: Callable[[EpochRecord], None],
    clock: _Clock,
) -> tuple[list[EpochRecord], np.ndarray, int | None]:
    """The timed epochs; a non-finite loss stops training (returned as the diverged step)."""
    from bench.core.seeding import dropout_masks

    batch = spec.training.batch_size
    records: list[EpochRecord] = []
    losses: list[np.ndarray] = []
    for epoch in range(spec.training.epochs):
        order = _epoch_order(run.epoch_orders[epoch], batch, options.steps, sum(map(len, losses)))
        if len(order) < batch:
            break
        masks = None
        if options.parity and spec.model.dropout_rate > 0:
            masks = dropout_masks(spec, run, epoch, len(order) // batch)
        clock.lap("dropout_masks")
        start = time.perf_counter()
        step_losses = backend.train_epoch(order, masks)
        backend.synchronize()
        seconds = time.perf_counter() - start
        clock.lap("train")
        losses.append(step_losses)
        records.append(
            EpochRecord(
                epoch=epoch + 1,
                steps=len(step_losses),
                train_loss=float(np.mean(step_losses)),
                val_accuracy=backend.accuracy("val"),
                epoch_seconds=seconds,
            )
        )
        clock.lap("evaluate")
        on_epoch(records[-1])
        bad = np.flatnonzero(~np.isfinite(step_losses))
        if bad.size:
            steps_before = sum(map(len, losses[:-1]))
            return records, np.concatenate(losses), steps_before + int(bad[0]) + 1
    return records, np.concatenate(losses), None


def _epoch_order(order: np.ndarray, batch: int, steps: int | None, done: int) -> np.ndarray:
    """The epoch's order, cut short where --steps ends training mid-epoch."""
    if steps is None:
        return order
    return order[: max(0, min(len(order) // batch, steps - done)) * batch]


def _memory(backend: Backend) -> dict[str, float]:
    # ru_maxrss is in KiB on Linux: the peak resident memory of this cell's whole process.
    memory = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    gpu = backend.device_memory_peak_mb()
    if gpu is not None:
        memory["peak_gpu_memory_mb"] = gpu
    return memory


def _numpy_blas() -> str:
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas['version']}"
    except (KeyError, TypeError):
        return "unknown"


def _environment(
    framework_env: dict[str, str], options: Options, data_sha256: str
) -> dict[str, str]:
    return {
        **framework_env,
        # The arrays the cell trained and evaluated on, so that `reproduce` can name the data.
        "data_sha256": data_sha256,
        **git_state(),
        "python_version": platform.python_version(),
        "numpy_version": np.__version__,
        "numpy_blas": _numpy_blas(),
        "cpu_model": cpu_model(),
        "cpu_isa": cpu_isa(),
        "cores_available": str(available_cores()),
        "threads": str(options.threads),
        # A busy machine slows a cell several-fold; the load at its start makes that visible.
        "load_average_1m": f"{os.getloadavg()[0]:.2f}",
        "platform": platform.platform(),
    }
