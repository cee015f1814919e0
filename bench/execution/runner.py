"""One cell (stage x backend x device x seed): load, build, timed epochs, evaluation.

Imports no framework itself: the backend is loaded by name. Runs inside the cell's own process
(see bench.execution.worker); the parent only sees the events and the result it emits.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import resource
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from backends.base import Backend, DType, Settings, TorchMatmul
from bench.core.errors import BenchError
from bench.core.provenance import git_state
from bench.core.seeding import SeededRun
from bench.core.spec import StageSpec, load_stage, with_epochs

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
    def group(self) -> str:
        """The cells that differ only by seed form a group: statistics are taken over it."""
        return f"{self.stage}/{self.backend}/{self.device}"

    @property
    def name(self) -> str:
        return f"{self.group}/seed{self.seed}"


@dataclass(frozen=True)
class RunOptions:
    """Options that apply to every cell of an invocation."""

    data_dir: str
    threads: int
    epochs: int | None = None  # None: the stage file's epochs
    parity: bool = False  # dropout masks from numpy, so both frameworks compute the same thing
    dtype: DType = "float32"
    deterministic: bool = True
    tf32: bool = False
    inter_op_threads: int = 1
    xla: bool = True
    accumulate: Literal["float64", "native"] = "float64"  # parity only: Settings.parity_accumulate
    cuda_graphs: bool = False  # PyTorch on GPUs: Settings.cuda_graphs
    torch_matmul: TorchMatmul = "auto"  # PyTorch on CPUs: Settings.torch_matmul
    max_steps: int | None = None  # stop after this many training steps (parity checks)
    keep_parameters: bool = False  # return the final weights (parity checks)

    def settings(self) -> Settings:
        return Settings(
            dtype=self.dtype,
            deterministic=self.deterministic,
            tf32=self.tf32,
            parity=self.parity,
            parity_accumulate=self.accumulate,
            cuda_graphs=self.cuda_graphs,
            torch_matmul=self.torch_matmul,
            inter_op_threads=self.inter_op_threads,
            xla=self.xla,
        )

    def record(self, backend: str | None = None) -> dict[str, str]:
        """The options that change results, as MLflow params (what `reproduce` reads back).

        For one backend's cells, an option that only another framework has is "n/a": a
        TensorFlow cell never ran a CUDA graph, whatever the invocation asked of PyTorch.
        """
        from backends import FRAMEWORK_ONLY_OPTIONS

        params = {
            "option.parity": str(self.parity).lower(),
            "option.dtype": self.dtype,
            "option.deterministic": str(self.deterministic).lower(),
            "option.tf32": str(self.tf32).lower(),
            "option.threads": str(self.threads),
            "option.inter_op_threads": str(self.inter_op_threads),
            "option.xla": str(self.xla).lower(),
            # Outside parity each framework's own RNG, with backends.base.dropout_threshold.
            "option.dropout_masks": "numpy" if self.parity else "framework-rng-16bit",
            "option.parity_accumulate": self.accumulate,
            "option.cuda_graphs": str(self.cuda_graphs).lower(),
            # As asked; the path a cell took, and why, is its env torch_matmul(_reason).
            "option.torch_matmul": self.torch_matmul,
        }
        for option, framework in FRAMEWORK_ONLY_OPTIONS.items():
            if backend is not None and backend != framework:
                params[f"option.{option}"] = "n/a"
        return params

    @classmethod
    def from_record(cls, params: dict[str, str], data_dir: str) -> RunOptions:
        """The inverse of record(), from a cell's MLflow params (with its training.epochs)."""
        try:
            return cls(
                data_dir=data_dir,
                threads=int(params["option.threads"]),
                epochs=int(params["training.epochs"]),
                parity=params["option.parity"] == "true",
                dtype="float64" if params["option.dtype"] == "float64" else "float32",
                deterministic=params["option.deterministic"] == "true",
                tf32=params["option.tf32"] == "true",
                inter_op_threads=int(params.get("option.inter_op_threads", "1")),
                xla=params.get("option.xla", "false") == "true",
                cuda_graphs=params.get("option.cuda_graphs", "false") == "true",
                torch_matmul=_recorded_matmul(params),
                # Runs recorded before the option computed parity in the native kernels.
                accumulate="float64"
                if params.get("option.parity_accumulate") == "float64"
                else "native",
            )
        except KeyError as missing:
            raise BenchError(
                f"the run lacks param {missing}; it was recorded by an older"
                " mlp-bench that did not record its options"
            ) from None


# A cell's environment (versions, hardware, threads, ...) is recorded as params under this
# prefix, so that the MLflow UI's "show diff only" sets it apart from the stage and options.
ENV_PREFIX = "env."


def environment_of(params: dict[str, str]) -> dict[str, str]:
    """A recorded cell's environment from its params, without the prefix (runs recorded
    before the prefix hold it unprefixed: every param that is not a spec or option one)."""
    prefixed = {k[len(ENV_PREFIX) :]: v for k, v in params.items() if k.startswith(ENV_PREFIX)}
    return prefixed or dict(params)


def _recorded_matmul(params: dict[str, str]) -> TorchMatmul:
    """The products' library a recorded cell used, so that a rerun takes the same path (an
    "auto" decided on another machine could differ); runs from before the option used MKL."""
    taken = environment_of(params).get("torch_matmul", "")
    if taken in ("mkl", "onednn"):
        return taken  # type: ignore[return-value]
    asked = params.get("option.torch_matmul", "mkl")
    return asked if asked in ("mkl", "onednn") else "auto"  # type: ignore[return-value]


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based
    steps: int  # training steps (batches) in this epoch
    train_loss: float  # mean of the epoch's step losses
    val_accuracy: float
    epoch_seconds: float  # training only, device synchronised; evaluation excluded


@dataclass
class CellResult:
    cell: Cell
    outcome: Outcome
    test_accuracy: float
    train_samples_per_s: float | None  # None with a single epoch: the first is warm-up
    spread: dict[str, float]  # min, p25, p75, max of the steady epochs' samples/s
    memory: dict[str, float]  # peak_rss_mb (the cell's process), peak_gpu_memory_mb
    epochs: list[EpochRecord]
    environment: dict[str, str]
    timings: dict[str, float]  # seconds spent per phase inside the cell's process
    diverged_step: int | None = None  # 1-based global step of the first non-finite loss
    step_losses: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)
    parameters: list[np.ndarray] = field(default_factory=list, repr=False)
    # The stage's data set, which the run's dataset inputs describe ("mnist" for results kept
    # on disk before there was a choice).
    dataset: str = "mnist"

    def to_json(self) -> dict[str, Any]:
        """Everything but the arrays, which travel as .npy/.npz files (see save_arrays)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del data["step_losses"], data["parameters"]
        data["cell"] = dataclasses.asdict(self.cell)
        data["epochs"] = [dataclasses.asdict(e) for e in self.epochs]
        return data

    def save_arrays(self, folder: Path) -> None:
        np.save(folder / "step_losses.npy", self.step_losses)
        if self.parameters:
            np.savez(folder / "parameters.npz", *self.parameters)

    @classmethod
    def load(cls, data: dict[str, Any], folder: Path) -> CellResult:
        params_path = folder / "parameters.npz"
        parameters = []
        if params_path.exists():
            with np.load(params_path) as arrays:
                parameters = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
        return cls(
            **{
                **data,
                "cell": Cell(**data["cell"]),
                "epochs": [EpochRecord(**e) for e in data["epochs"]],
                "step_losses": np.load(folder / "step_losses.npy"),
                "parameters": parameters,
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


def cpu_isa() -> str:
    """The widest x86 vector extension the CPU has ("avx512f", "avx2", ...) or the machine
    type: one "AMD EPYC" had AVX-512 and another only AVX2, and MKL and oneDNN pick their
    kernels (and so their speed) by it."""
    try:
        flags = next(
            line.split(":", 1)[1].split()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return platform.machine() or "unknown"
    for isa in ("avx512f", "avx2", "avx", "sse4_2"):
        if isa in flags:
            return isa
    return platform.machine() or "unknown"


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
    options: RunOptions,
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
    backend = backend_cls(cell.device, options.threads, options.settings())
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
    options: RunOptions,
    on_epoch: Callable[[EpochRecord], None],
    clock: _Clock,
) -> tuple[list[EpochRecord], np.ndarray, int | None]:
    """The timed epochs; a non-finite loss stops training (returned as the diverged step)."""
    from bench.core.seeding import dropout_masks

    batch = spec.training.batch_size
    records: list[EpochRecord] = []
    losses: list[np.ndarray] = []
    for epoch in range(spec.training.epochs):
        order = _epoch_order(
            run.epoch_orders[epoch], batch, options.max_steps, sum(map(len, losses))
        )
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


def _epoch_order(order: np.ndarray, batch: int, max_steps: int | None, done: int) -> np.ndarray:
    """The epoch's order, cut short where --steps ends training mid-epoch."""
    if max_steps is None:
        return order
    return order[: max(0, min(len(order) // batch, max_steps - done)) * batch]


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
    framework_env: dict[str, str], options: RunOptions, data_sha256: str
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
