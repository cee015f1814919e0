"""The GPU check: `mlp-bench gpu-check [--data-dir D] [--out DIR]` (`nox -s gpu_check`; also
`python -m bench.gpu_check`). It records nothing to MLflow, so it runs on a minimal GPU machine.

It checks every installed backend that can use the GPU but TensorFlow (`--backend` to choose),
so a machine with only PyTorch, or only JAX, is checked too. The items run in order of what they
prove, so that a run cut short has proved the most: each backend's float32 peak; relu-xavier;
adam and dropout, each eager and, for a backend with CUDA graphs (PyTorch), graphed, the two
compared byte for byte (a graph that replayed a stale batch, mask or lr_t would still
converge); a bitwise rerun of dropout per backend (with graphs where they exist: the CUDA
Philox generator inside a graph; JAX's threefry masks otherwise); float64 parity of each
backend's GPU against its CPU, and of every pair of backends on the GPU, for relu-xavier and
adam; then the rest (graphs for relu-xavier, the TF32 peak and a TF32 row against it,
relu-normal, the other parity runs) and the CPU's peaks last.

Each finished item rewrites gpu_table.txt and gpu_check.json in --out, so a run cut short
still leaves what it measured; a failing cell or peak becomes a FAILED line instead of ending
the check (the tail of each failed worker's log goes to failed_logs.txt), and items that would
start past --budget-s are listed as skipped. `--device cpu` rehearses the whole script on a
machine without a GPU (GPU-only items skipped, parity against itself). Exit status 0 only when
everything ran, every eager/graph pair and the rerun were bit-identical and float64 parity
passed; 1 when a check failed; 2 for bad input.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from backends import check_backend, installed_backends
from bench.core.data import ensure_data, resolve_data_dir
from bench.core.devices import cpu_model, gpu_driver_version
from bench.core.errors import BenchError
from bench.core.options import Options, framework_options
from bench.core.spec import load_stage
from bench.core.types import Cell, CellResult, DType, Product
from bench.execution.device_choice import resolve_devices
from bench.execution.matrix import LocalExecutor, run_alone
from bench.execution.parity_check import compare, parity_options
from bench.recording.speed import flops_per_sample, step_products

Device = Literal["cpu", "gpu"]
PARITY_STEPS: dict[DType, int] = {"float64": 550, "float32": 50}
GRAPHS, TF32 = " cuda-graphs", " tf32"  # row name suffixes
FIRST_STAGES = ("relu-xavier", "adam", "dropout")  # the rows worth most, in this order
GRAPHED_FIRST = ("adam", "dropout")  # stages whose CUDA-graph rows come early
PARITY_FIRST = ("relu-xavier", "adam")  # float64 parity worth running before the rest
GPU_ONLY = "skipped: GPU only"
# Taken from the first cell that finishes: the versions and GPU that every row ran on.
ENVIRONMENT_KEYS = ("framework_version", "cuda_version", "cudnn_version", "gpu_model")


@functools.cache
def _reference_products() -> tuple[Product, ...]:
    """relu-xavier's products, at which the attainable limit is timed (the built-in stages
    share them). Read when the check runs, not on import: every command imports this module,
    and `list` must work with a stages folder that has no relu-xavier."""
    return tuple(step_products(load_stage("relu-xavier")))


@dataclass(frozen=True)
class Settings:
    """What to check, where, and for how long (the flags of `mlp-bench gpu-check`)."""

    out: Path
    device: Device
    stages: list[str]
    backends: list[str] | None  # None: every installed backend but TensorFlow
    data_dir: str | None
    epochs: int
    budget_s: float  # items that would start after this many seconds are skipped


@dataclass
class Row:
    cell: str
    outcome: str  # the cell's outcome, "FAILED: why" or "skipped: why"
    test_accuracy: float | None = None
    samples_per_s: float | None = None
    train_gflops: float | None = None
    roofline: float | None = None
    peak: str | None = None  # the name of the peak that `roofline` divides by
    attainable: float | None = None  # samples/s against the step's products alone
    gpu_memory_mb: float | None = None
    gpu_model: str = "-"
    step_losses_sha256: str | None = None

    def line(self) -> str:
        if self.test_accuracy is None:  # failed or skipped
            return f"{self.cell:<34} {self.outcome}"
        if self.samples_per_s is None:  # one epoch (or a divergence): no steady state
            speed = f"{'n/a':>12} samples/s (fewer than 2 epochs ran)"
        else:
            roofline = (
                f"roofline {self.roofline:.4f} of {self.peak}"
                if self.roofline is not None
                else "roofline n/a (no peak measured)"
            )
            speed = f"{self.samples_per_s:>12,.0f} samples/s  {self.train_gflops:8.1f} GFLOP/s  "
            speed += roofline
            if self.attainable is not None:
                speed += f", {self.attainable:.2f} of attainable"
        memory = "" if self.gpu_memory_mb is None else f"  {self.gpu_memory_mb:.0f} MiB"
        return (
            f"{self.cell:<34} {self.outcome:<13} {100 * self.test_accuracy:6.2f}%  {speed}{memory}"
        )


@dataclass
class Report:
    """Everything measured so far; saved whole after each item."""

    out: Path
    device: Device
    backends: list[str] = field(default_factory=lambda: ["torch"])
    environment: dict[str, str] = field(default_factory=dict)
    # "BACKEND DEVICE[ tf32]": "torch gpu", "torch gpu tf32", "jax cpu", ...
    peaks: dict[str, float] = field(default_factory=dict)
    peak_failures: dict[str, str] = field(default_factory=dict)
    # "BACKEND DEVICE[ cuda-graphs]": the samples/s of relu-xavier's step products alone
    attainable: dict[str, float] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    # "STAGE/BACKEND" -> "identical", "DIFFERENT ...", or why not compared: eager against
    # CUDA graphs, for the backends that have them.
    graphs: dict[str, str] = field(default_factory=dict)
    # The rerun row's name -> "identical", "DIFFERENT ...", or why not run; one per backend.
    bitwise: dict[str, str] = field(default_factory=dict)
    parity: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # items the budget left out
    finished: bool = False  # False in a file saved midway (or left by a run cut short)

    @property
    def passed(self) -> bool:
        if not self.finished or self.skipped or self.peak_failures:
            return False
        if any(r.outcome.startswith("FAILED") for r in self.rows):
            return False
        graphs = all(v in ("identical", GPU_ONLY) for v in self.graphs.values())
        reruns = bool(self.bitwise) and set(self.bitwise.values()) == {"identical"}
        float64 = [v["passed"] for k, v in self.parity.items() if k.endswith("float64")]
        return graphs and reruns and bool(float64) and all(float64)

    def lines(self) -> list[str]:
        env = ", ".join(f"{k} {v}" for k, v in self.environment.items())
        peaks = [f"{d} {v:,.0f} GFLOP/s" for d, v in self.peaks.items()]
        peaks += [f"{d} FAILED: {why}" for d, why in self.peak_failures.items()]
        lines = [
            f"backends: {', '.join(self.backends)}; environment: {env}",
            f"peak matmul: {', '.join(peaks) or 'not measured'}",
        ]
        if self.attainable:
            limits = [f"{name} {value:,.0f} samples/s" for name, value in self.attainable.items()]
            lines.append(f"attainable (relu-xavier's step products alone): {', '.join(limits)}")
        lines += [row.line() for row in self.rows]
        lines += [f"eager vs cuda-graphs {stage}: {v}" for stage, v in self.graphs.items()]
        lines += [f"bitwise rerun of {cell}: {v}" for cell, v in self.bitwise.items()]
        for name, v in self.parity.items():
            if "measured" not in v:
                lines.append(f"parity {name}: {v['outcome']}")
                continue
            verdict = "PASS" if v["passed"] else "FAIL"
            lines.append(
                f"parity {name}: {v['measured']:.3e} ({verdict}), weights {v['weights']:.3e}"
            )
        lines += [f"skipped (budget spent): {what}" for what in self.skipped]
        verdict = "passed" if self.passed else "FAILED"
        return [*lines, f"check {verdict}" if self.finished else "check unfinished (cut short?)"]

    def document(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "backends": self.backends,
            "environment": self.environment,
            "peaks": self.peaks,
            "peak_failures": self.peak_failures,
            "attainable": self.attainable,
            "rows": [asdict(r) for r in self.rows],
            "graphs": self.graphs,
            "bitwise": self.bitwise,
            "parity": self.parity,
            "skipped": self.skipped,
            "finished": self.finished,
            "passed": self.passed,
        }

    def save(self) -> None:
        """Both files, each written whole and then renamed into place; strict JSON (a diverged
        parity run's infinite difference is written as null)."""
        document = json.dumps(_finite(self.document()), indent=1, allow_nan=False)
        for name, text in (
            ("gpu_table.txt", "\n".join(self.lines()) + "\n"),
            ("gpu_check.json", document),
        ):
            staged = self.out / f".{name}.partial"
            staged.write_text(text)
            staged.replace(self.out / name)


def _finite(value: Any) -> Any:
    """The value with every non-finite float replaced by None (JSON has no Infinity or NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def losses_verdict(first: np.ndarray, second: np.ndarray) -> str:
    """ "identical" when the step losses agree byte for byte; else where they part."""
    if first.tobytes() == second.tobytes():
        return "identical"
    if first.shape != second.shape or first.dtype != second.dtype:
        return f"DIFFERENT: {first.size} {first.dtype} against {second.size} {second.dtype} steps"
    bits = f"u{first.itemsize}"  # compared as bits: NaN losses of a divergence compare equal
    step = int(np.flatnonzero(first.view(bits) != second.view(bits))[0])
    return f"DIFFERENT from step {step + 1} ({first[step]!r} against {second[step]!r})"


@dataclass(frozen=True)
class Item:
    """One thing the check does, named as the table and the budget list name it."""

    name: str
    body: Callable[[], None]


class Check:
    """Runs the items in order against a deadline, saving the report after each."""

    def __init__(self, settings: Settings) -> None:
        self.device: Device = settings.device
        self.stages: list[str] = settings.stages
        self.backends: list[str] = settings.backends or _default_backends()
        self.datasets = [load_stage(stage).dataset for stage in self.stages]
        self.data_dir = str(resolve_data_dir(settings.data_dir))
        self.epochs: int = settings.epochs
        # Host threads per cell: a GPU cell needs few; no more than the cores (CPU rehearsal).
        self.threads = min(4, os.cpu_count() or 1)
        self.budget_s: float = settings.budget_s
        self.report = Report(out=settings.out, device=settings.device, backends=self.backends)
        self._losses: dict[str, np.ndarray] = {}  # row name -> its step losses
        self._results: dict[str, CellResult] = {}  # parity cell name -> its result

    def run(self) -> Report:
        for backend in self.backends:
            check_backend(backend)
        # The data as every command reads it (missing files downloaded and verified); a bad
        # --data-dir fails here, in one line, before the output folder is made.
        ensure_data(self.data_dir, self.datasets)
        if self.device == "gpu":
            resolve_devices(["gpu"], self.backends)  # one line if a backend cannot use a GPU
        self.report.out.mkdir(parents=True, exist_ok=True)
        self.report.environment = {"cpu": cpu_model()}
        if self.device == "gpu":
            self.report.environment["driver"] = gpu_driver_version()
        deadline = time.monotonic() + self.budget_s
        for item in self.plan():
            if time.monotonic() > deadline:
                self.report.skipped.append(item.name)
            else:
                item.body()
            self.report.save()
        self.report.finished = True
        self.report.save()
        return self.report

    # --- the plan --------------------------------------------------------------------------

    def plan(self) -> list[Item]:
        """Every item, the most valuable first (see the module's docstring)."""
        device, stages, backends = self.device, self.stages, self.backends
        items = [self._peak_item(b, device, tf32=False) for b in backends]
        items += [self._attainable_item(b, "") for b in backends]
        items += [self._attainable_item(b, GRAPHS) for b in backends if _has_graphs(b)]
        for stage in (s for s in FIRST_STAGES if s in stages):
            for backend in backends:
                items.append(self._row_item(stage, backend, ""))
                if stage in GRAPHED_FIRST and _has_graphs(backend):
                    items.append(self._row_item(stage, backend, GRAPHS))
        items += [self._bitwise_item(b) for b in backends]
        items += self._parity_items([s for s in PARITY_FIRST if s in stages], "float64")
        if "relu-xavier" in stages:
            for backend in backends:
                if _has_graphs(backend):
                    items.append(self._row_item("relu-xavier", backend, GRAPHS))
                if device == "gpu":  # CPUs have no TF32: the row below is skipped there
                    items.append(self._peak_item(backend, device, tf32=True))
                items.append(self._row_item("relu-xavier", backend, TF32))
        rest = [s for s in stages if s not in FIRST_STAGES]
        items += [self._row_item(s, b, "") for s in rest for b in backends]
        items += self._parity_items([s for s in stages if s not in PARITY_FIRST], "float64")
        items += self._parity_items(stages, "float32")
        if device != "cpu":
            items += [self._peak_item(b, "cpu", tf32=False) for b in backends]
        return items

    def _peak_item(self, backend: str, device: Device, tf32: bool) -> Item:
        name = f"{backend} {device}{TF32 if tf32 else ''}"

        def body() -> None:
            threads = (os.cpu_count() or 1) if device == "cpu" else 1
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    options = Options(data_dir="", threads=threads, tf32=tf32)
                    value = LocalExecutor().peak(backend, device, options, Path(tmp))
            except BenchError as error:  # the rows go on, without a roofline
                self.report.peak_failures[name] = str(error)
            else:
                self.report.peaks[name] = value

        return Item(f"peak {name}", body)

    def _attainable_item(self, backend: str, variant: str) -> Item:
        """The step's products alone, as the rows compute them (graphed: one replay)."""
        name = f"{backend} {self.device}{variant}"

        def body() -> None:
            if variant and self.device != "gpu":  # CUDA graphs exist on GPUs only
                return
            products = list(_reference_products())
            options = self._options(cuda_graphs=variant == GRAPHS)
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    [seconds] = LocalExecutor().attainable(
                        backend, self.device, options, [products], Path(tmp)
                    )
            except BenchError as error:  # the rows go on, without the fraction
                self.report.peak_failures[f"attainable {name}"] = str(error)
            else:
                self.report.attainable[name] = products[0].m / seconds

        return Item(f"attainable {name}", body)

    def _row_name(self, stage: str, backend: str, variant: str) -> str:
        return f"{stage}/{backend}/{self.device}{variant}"

    def _row_item(self, stage: str, backend: str, variant: str) -> Item:
        name = self._row_name(stage, backend, variant)
        options = self._options(cuda_graphs=variant == GRAPHS, tf32=variant == TF32)

        def body() -> None:
            if variant and self.device != "gpu":  # CUDA graphs and TF32 exist on GPUs only
                self.report.rows.append(Row(name, GPU_ONLY))
                if variant == GRAPHS:
                    self.report.graphs[f"{stage}/{backend}"] = GPU_ONLY
                return
            result = self._cell(name, Cell(stage, backend, self.device, 0), options)
            self.report.rows.append(self._row(name, result, variant))
            if variant == GRAPHS:
                eager = self._row_name(stage, backend, "")
                self.report.graphs[f"{stage}/{backend}"] = self._compare(eager, name)

        return Item(name, body)

    def _bitwise_item(self, backend: str) -> Item:
        stage, variant = self._bitwise_row(backend)
        name = self._row_name(stage, backend, variant)

        def body() -> None:
            options = self._options(cuda_graphs=variant == GRAPHS)
            again = self._cell(f"{name} again", Cell(stage, backend, self.device, 0), options)
            if isinstance(again, str):
                self.report.bitwise[name] = again
            else:
                self.report.bitwise[name] = self._compare(name, f"{name} again")

        return Item(f"bitwise rerun {backend}", body)

    def _parity_items(self, stages: list[str], dtype: DType) -> list[Item]:
        """Per stage: each backend's device against its CPU, then every pair of backends on
        the device (the cells trained once, shared by both comparisons)."""
        items = []
        for stage in stages:
            items += [
                Item(
                    f"parity {stage} {dtype} {b}", functools.partial(self._parity, stage, dtype, b)
                )
                for b in self.backends
            ]
            items += [
                Item(
                    f"parity {stage} {dtype} {a} vs {b}",
                    functools.partial(self._parity_pair, stage, dtype, a, b),
                )
                for a, b in itertools.combinations(self.backends, 2)
            ]
        return items

    # --- the items' work -------------------------------------------------------------------

    def _options(self, **changes: Any) -> Options:
        return Options(data_dir=self.data_dir, threads=self.threads, epochs=self.epochs, **changes)

    def _cell(self, name: str, cell: Cell, options: Options) -> CellResult | str:
        """The cell's result, or why it failed (its log's tail kept in failed_logs.txt)."""
        run = run_alone(cell, options)
        if run.result is not None:
            self._losses[name] = run.result.step_losses
            for key in ENVIRONMENT_KEYS:
                named = key if key == "gpu_model" else f"{cell.backend} {key}"
                self.report.environment.setdefault(named, run.result.environment.get(key, "-"))
            return run.result
        with (self.report.out / "failed_logs.txt").open("a") as logs:
            logs.write(f"=== {name}: {run.error}\n{run.log_tail}\n\n")
        return f"FAILED: {run.error} (log tail: failed_logs.txt)"

    def _row(self, name: str, result: CellResult | str, variant: str) -> Row:
        if isinstance(result, str):
            return Row(name, result)
        row = Row(
            cell=name,
            outcome=result.outcome,
            test_accuracy=result.test_accuracy,
            gpu_memory_mb=result.memory.get("peak_gpu_memory_mb"),
            gpu_model=result.environment.get("gpu_model", "-"),
            step_losses_sha256=hashlib.sha256(result.step_losses.tobytes()).hexdigest(),
        )
        speed = result.train_samples_per_s
        if speed is not None:
            row.samples_per_s = speed
            row.train_gflops = speed * flops_per_sample(load_stage(result.cell.stage)) / 1e9
            # A TF32 row is held against the TF32 peak: its limit, several times float32's.
            peak_name = f"{result.cell.backend} {self.device}{TF32 if variant == TF32 else ''}"
            peak = self.report.peaks.get(peak_name)
            if peak:
                row.roofline, row.peak = row.train_gflops / peak, peak_name
            # Float32 products of relu-xavier's shapes: a TF32 row, or other shapes, have none.
            graphs = GRAPHS if variant == GRAPHS else ""
            limit = self.report.attainable.get(f"{result.cell.backend} {self.device}{graphs}")
            stage = load_stage(result.cell.stage)
            if limit and variant != TF32 and tuple(step_products(stage)) == _reference_products():
                row.attainable = speed / limit
        return row

    def _compare(self, first: str, second: str) -> str:
        """Whether two rows trained byte for byte alike; why not compared where one failed."""
        missing = [name for name in (first, second) if name not in self._losses]
        if missing:
            return f"not compared: {', '.join(missing)} did not finish"
        return losses_verdict(self._losses[first], self._losses[second])

    def _bitwise_row(self, backend: str) -> tuple[str, str]:
        """The row the bitwise rerun repeats: dropout, with CUDA graphs where the backend has
        them (the framework's own dropout RNG inside a replayed graph); eager on a CPU."""
        training = [s for s in self.stages if s != "relu-normal"] or self.stages
        stage = "dropout" if "dropout" in training else training[-1]
        graphs = self.device == "gpu" and stage != "relu-normal" and _has_graphs(backend)
        return stage, GRAPHS if graphs else ""

    def _parity_cell(
        self, stage: str, dtype: DType, backend: str, device: Device
    ) -> CellResult | str:
        """A parity cell, trained once however many comparisons use it."""
        name = f"parity {stage} {dtype} {backend}/{device}"
        if name not in self._results:
            result = self._cell(
                name, Cell(stage, backend, device, 0), self._parity_options(stage, dtype)
            )
            if isinstance(result, str):
                return result
            self._results[name] = result
        return self._results[name]

    def _parity_options(self, stage: str, dtype: DType) -> Options:
        spec = load_stage(stage)
        return parity_options(self.data_dir, self.threads, PARITY_STEPS[dtype], dtype, spec)

    def _parity(self, stage: str, dtype: DType, backend: str) -> None:
        """The backend on the device against itself on the CPU."""
        sides = {
            f"{backend}/{d}": self._parity_cell(stage, dtype, backend, d)
            for d in dict.fromkeys((self.device, "cpu"))
        }
        name = f"{backend}/{self.device} vs {backend}/cpu {stage} {dtype}"
        if len(sides) == 1:  # the CPU rehearsal: one run compared with itself
            sides[f"{backend}/cpu again"] = next(iter(sides.values()))
        self._record_parity(name, stage, dtype, sides)

    def _parity_pair(self, stage: str, dtype: DType, first: str, second: str) -> None:
        """Two backends on the device."""
        sides = {b: self._parity_cell(stage, dtype, b, self.device) for b in (first, second)}
        name = f"{first}/{self.device} vs {second}/{self.device} {stage} {dtype}"
        self._record_parity(name, stage, dtype, sides)

    def _record_parity(
        self, name: str, stage: str, dtype: DType, sides: dict[str, CellResult | str]
    ) -> None:
        failed = [r for r in sides.values() if isinstance(r, str)]
        if failed:
            self.report.parity[name] = {"outcome": failed[0], "passed": False}
            return
        results = {k: v for k, v in sides.items() if not isinstance(v, str)}
        report = compare(stage, self._parity_options(stage, dtype), results)
        self.report.parity[name] = {
            "measured": report.measured,
            "passed": report.passed,
            "weights": report.weight_rel_diff,
        }


def _has_graphs(backend: str) -> bool:
    """Whether the backend has CUDA graphs (declared in its registry line)."""
    return backend in framework_options().get("cuda_graphs", ())


def _default_backends() -> list[str]:
    """Every installed backend but TensorFlow, whose GPU paths `run --device gpu` and
    tests/test_tensorflow_gpu_paths.py check: the check then needs neither TensorFlow nor its
    CUDA libraries, and a machine with PyTorch or JAX alone can run it."""
    return [b for b in installed_backends() if b != "tensorflow"]
