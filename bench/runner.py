"""One cell (stage x backend x device x seed): load, build, timed epochs, evaluation.

Imports no framework itself: the backend is loaded by name. Runs inside the cell's own process
(see bench.worker); the parent only sees the events and the result it emits.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bench.spec import StageSpec, load_stage, with_epochs

Outcome = Literal["converged", "did-not-learn", "diverged"]
# A finite run whose test accuracy stays below this has not learned (chance is 10%).
LEARNED_ACCURACY = 0.5


@dataclass(frozen=True)
class Cell:
    stage: str
    backend: str
    device: Literal["cpu", "gpu"]
    seed: int

    @property
    def name(self) -> str:
        return f"{self.stage}/{self.backend}/{self.device}/seed{self.seed}"


@dataclass(frozen=True)
class RunOptions:
    """Options that apply to every cell of an invocation."""

    data_dir: str
    threads: int
    epochs: int | None = None  # None: the stage file's epochs


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float  # mean of the epoch's step losses
    val_accuracy: float
    epoch_seconds: float  # training only, device synchronised; evaluation excluded


@dataclass
class CellResult:
    cell: Cell
    outcome: Outcome
    test_accuracy: float
    train_samples_per_s: float | None  # None with a single epoch: the first is warm-up
    epochs: list[EpochRecord]
    environment: dict[str, str]
    timings: dict[str, float]  # seconds spent per phase inside the cell's process
    diverged_step: int | None = None  # 1-based global step of the first non-finite loss
    step_losses: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("step_losses")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], step_losses: np.ndarray) -> CellResult:
        return cls(
            **{
                **data,
                "cell": Cell(**data["cell"]),
                "epochs": [EpochRecord(**e) for e in data["epochs"]],
                "step_losses": step_losses,
            }
        )


def available_cores() -> int:
    return len(os.sched_getaffinity(0))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def steady_throughput(epochs: list[EpochRecord], n_samples: int) -> float | None:
    """Samples/s from the median epoch after the first (tracing and compilation stay out)."""
    timed = [e.epoch_seconds for e in epochs[1:]]
    return n_samples / float(np.median(timed)) if timed else None


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
    options: RunOptions,
    on_epoch: Callable[[EpochRecord], None] = lambda record: None,
    spec: StageSpec | None = None,
) -> CellResult:
    """Run one cell in this process and return its result."""
    from backends import load_backend  # lazily: importing a backend imports its framework
    from bench.data import load_mnist
    from bench.seeding import seeded_run

    clock = _Clock()
    spec = with_epochs(spec or load_stage(cell.stage), options.epochs)
    backend_cls = load_backend(cell.backend)
    clock.lap("framework_import")
    splits = load_mnist(Path(options.data_dir), download=False)
    n_train = splits.train_x.shape[0]
    run = seeded_run(spec, cell.seed, n_train)
    clock.lap("data_load")
    backend = backend_cls(cell.device, options.threads)
    backend.load_data(splits)
    backend.build(spec, run)
    clock.lap("build")

    records: list[EpochRecord] = []
    losses: list[np.ndarray] = []
    diverged_step = None
    for epoch in range(spec.training.epochs):
        start = time.perf_counter()
        step_losses = backend.train_epoch(run.epoch_orders[epoch])
        backend.synchronize()
        seconds = time.perf_counter() - start
        clock.lap("train")
        losses.append(step_losses)
        bad = np.flatnonzero(~np.isfinite(step_losses))
        record = EpochRecord(
            epoch=epoch + 1,
            train_loss=float(np.mean(step_losses)),
            val_accuracy=backend.accuracy("val"),
            epoch_seconds=seconds,
        )
        clock.lap("evaluate")
        records.append(record)
        on_epoch(record)
        if bad.size:  # a non-finite loss stops the cell
            diverged_step = sum(len(x) for x in losses[:-1]) + int(bad[0]) + 1
            break
    test_accuracy = backend.accuracy("test")
    clock.lap("evaluate")
    batch_samples = (n_train // spec.training.batch_size) * spec.training.batch_size
    return CellResult(
        cell=cell,
        outcome=classify(diverged_step is None, test_accuracy),
        test_accuracy=test_accuracy,
        train_samples_per_s=steady_throughput(records, batch_samples),
        epochs=records,
        environment=_environment(backend.environment(), options),
        timings=clock.timings,
        diverged_step=diverged_step,
        step_losses=np.concatenate(losses),
    )


def _environment(framework_env: dict[str, str], options: RunOptions) -> dict[str, str]:
    return {
        **framework_env,
        "python_version": platform.python_version(),
        "numpy_version": np.__version__,
        "cpu_model": cpu_model(),
        "cores_available": str(available_cores()),
        "threads": str(options.threads),
        # A busy machine slows a cell several-fold; the load at its start makes that visible.
        "load_average_1m": f"{os.getloadavg()[0]:.2f}",
        "platform": platform.platform(),
    }
