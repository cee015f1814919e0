"""The GPU check: `python -m bench.gpu_check --data-dir D --out DIR` (PyTorch only, no MLflow).

Made for a lent GPU machine that has PyTorch but neither TensorFlow nor MLflow, and a few minutes
of it. It measures the peak float32 matmul rate on the GPU (and the CPU for scale), trains every
stage on torch/gpu (TF32 off, the default), the training stages again with CUDA graphs,
relu-xavier with TF32 on, adam twice to check bitwise reruns, and checks parity of torch/gpu
against torch/cpu (float64 over one epoch, float32 over 50 steps).

Each finished item rewrites gpu_table.txt and gpu_check.json in --out, so a run cut short
still leaves what it measured; a failing cell becomes a FAILED row instead of ending the check,
and items that would start past --budget-s are listed as skipped. `--device cpu` rehearses the
whole script on a machine without a GPU (GPU-only rows skipped, parity against itself). Exit
status 0 only when every cell ran, the rerun was bit-identical and float64 parity passed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

from backends.base import DType
from bench.data import ensure_files, resolve_data_dir
from bench.errors import BenchError
from bench.matrix import LocalExecutor, run_alone
from bench.parity import compare, parity_options
from bench.perf import flops_per_sample
from bench.runner import Cell, CellResult, RunOptions
from bench.spec import STAGE_NAMES, load_stage

Device = Literal["cpu", "gpu"]
PARITY_RUNS: tuple[tuple[DType, int], ...] = (("float64", 550), ("float32", 50))  # steps


@dataclass
class Row:
    cell: str
    outcome: str  # the cell's outcome, "FAILED: why" or "skipped: why"
    test_accuracy: float | None = None
    samples_per_s: float | None = None
    train_gflops: float | None = None
    roofline: float | None = None
    gpu_memory_mb: float | None = None
    gpu_model: str = "-"

    def line(self) -> str:
        if self.test_accuracy is None:  # failed or skipped
            return f"{self.cell:<34} {self.outcome}"
        if self.samples_per_s is None:  # one epoch (or a divergence): no steady state
            speed = f"{'n/a':>12} samples/s (fewer than 2 epochs ran)"
        else:
            speed = (
                f"{self.samples_per_s:>12,.0f} samples/s  {self.train_gflops:8.1f} GFLOP/s  "
                f"roofline {self.roofline:.4f}"
            )
        memory = "" if self.gpu_memory_mb is None else f"  {self.gpu_memory_mb:.0f} MiB"
        return (
            f"{self.cell:<34} {self.outcome:<13} {100 * self.test_accuracy:6.2f}%  {speed}{memory}"
        )


@dataclass
class Report:
    """Everything measured so far; saved whole after each item."""

    out: Path
    device: Device
    peaks: dict[str, float] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)
    bitwise: str = "not run"  # "identical", "DIFFERENT", or why not run
    parity: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # items the budget left out
    finished: bool = False  # False in a file saved midway (or left by a run cut short)

    @property
    def passed(self) -> bool:
        if not self.finished:
            return False
        ran = not self.skipped and not any(r.outcome.startswith("FAILED") for r in self.rows)
        float64 = [v["passed"] for k, v in self.parity.items() if k.endswith("float64")]
        return ran and self.bitwise == "identical" and bool(float64) and all(float64)

    def lines(self) -> list[str]:
        peaks = ", ".join(f"{d} {v:,.0f} GFLOP/s" for d, v in self.peaks.items())
        lines = [f"peak float32 matmul: {peaks or 'not measured'}"]
        lines += [row.line() for row in self.rows]
        lines.append(f"bitwise rerun on {self.device} (adam seed 1): {self.bitwise}")
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

    def save(self) -> None:
        """Both files, each written whole and then renamed into place."""
        document = {
            "device": self.device,
            "peaks": self.peaks,
            "rows": [asdict(r) for r in self.rows],
            "bitwise": self.bitwise,
            "parity": self.parity,
            "skipped": self.skipped,
            "finished": self.finished,
            "passed": self.passed,
        }
        for name, text in (
            ("gpu_table.txt", "\n".join(self.lines()) + "\n"),
            ("gpu_check.json", json.dumps(document, indent=1)),
        ):
            staged = self.out / f".{name}.partial"
            staged.write_text(text)
            staged.replace(self.out / name)


def _cell(cell: Cell, options: RunOptions) -> CellResult | str:
    """The cell's result, or why it failed."""
    run = run_alone(cell, options)
    return run.result if run.result is not None else f"FAILED: {run.error}"


def _row(name: str, result: CellResult | str, peak: float) -> Row:
    if isinstance(result, str):
        return Row(name, result)
    row = Row(
        cell=name,
        outcome=result.outcome,
        test_accuracy=result.test_accuracy,
        gpu_memory_mb=result.memory.get("peak_gpu_memory_mb"),
        gpu_model=result.environment.get("gpu_model", "-"),
    )
    speed = result.train_samples_per_s
    if speed is not None:
        row.samples_per_s = speed
        row.train_gflops = speed * flops_per_sample(load_stage(result.cell.stage)) / 1e9
        row.roofline = row.train_gflops / peak
    return row


class Check:
    """Runs the items in order against a deadline, saving the report after each."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.device: Device = args.device
        self.stages: list[str] = args.stages
        self.data_dir = str(resolve_data_dir(args.data_dir))
        self.epochs: int = args.epochs
        # Host threads per cell: a GPU cell needs few; no more than the cores (CPU rehearsal).
        self.threads = min(4, os.cpu_count() or 1)
        self.deadline = time.monotonic() + args.budget_s
        self.report = Report(out=Path(args.out), device=args.device)

    def run(self) -> Report:
        ensure_files(Path(self.data_dir))  # a bad --data-dir fails here, in one line
        self.report.out.mkdir(parents=True, exist_ok=True)
        self._peaks()
        self._train_rows()
        self._item("bitwise rerun", self._bitwise)
        for dtype, steps in PARITY_RUNS:
            for stage in self.stages:
                self._item(f"parity {stage} {dtype}", partial(self._parity, stage, dtype, steps))
        self.report.finished = True
        self.report.save()
        return self.report

    def _item(self, what: str, body: Callable[[], None]) -> None:
        """Run one item unless the budget is spent; save the report either way."""
        if time.monotonic() > self.deadline:
            self.report.skipped.append(what)
        else:
            body()
        self.report.save()

    def _peaks(self) -> None:
        executor = LocalExecutor()
        cpu_threads = os.cpu_count() or 1
        with tempfile.TemporaryDirectory() as tmp:
            for device in dict.fromkeys((self.device, "cpu")):
                threads = cpu_threads if device == "cpu" else 1
                self.report.peaks[device] = executor.peak("torch", device, threads, Path(tmp))
        self.report.save()

    def _options(self, **changes: Any) -> RunOptions:
        return RunOptions(
            data_dir=self.data_dir, threads=self.threads, epochs=self.epochs, **changes
        )

    def _train_rows(self) -> None:
        peak = self.report.peaks[self.device]
        device = self.device
        training = [s for s in self.stages if s != "relu-normal"]
        variants: list[tuple[str, str, RunOptions]] = [
            (s, "", self._options()) for s in self.stages
        ]
        variants += [(s, " cuda-graphs", self._options(cuda_graphs=True)) for s in training]
        if "relu-xavier" in self.stages:
            variants.append(("relu-xavier", " tf32", self._options(tf32=True)))
        for stage, label, options in variants:
            name = f"{stage}/torch/{device}{label}"
            if label and device != "gpu":
                self.report.rows.append(Row(name, "skipped: GPU only"))
                continue

            def body(n: str = name, s: str = stage, o: RunOptions = options) -> None:
                self.report.rows.append(_row(n, _cell(Cell(s, "torch", device, 0), o), peak))

            self._item(name, body)

    def _bitwise(self) -> None:
        first, again = (
            _cell(Cell("adam", "torch", self.device, 1), self._options()) for _ in range(2)
        )
        if isinstance(first, str) or isinstance(again, str):
            self.report.bitwise = first if isinstance(first, str) else str(again)
        else:
            same = first.step_losses.tobytes() == again.step_losses.tobytes()
            self.report.bitwise = "identical" if same else "DIFFERENT"

    def _parity(self, stage: str, dtype: DType, steps: int) -> None:
        batch = load_stage(stage).training.batch_size
        options = parity_options(self.data_dir, self.threads, steps, dtype, batch)
        sides: dict[str, CellResult | str] = {
            f"torch/{d}": _cell(Cell(stage, "torch", d, 0), options)
            for d in dict.fromkeys((self.device, "cpu"))
        }
        name = f"torch/{self.device} vs torch/cpu {stage} {dtype}"
        failed = [r for r in sides.values() if isinstance(r, str)]
        if failed:
            self.report.parity[name] = {"outcome": failed[0], "passed": False}
            return
        results = {k: v for k, v in sides.items() if not isinstance(v, str)}
        if len(results) == 1:  # the CPU rehearsal: one run compared with itself
            results["torch/cpu again"] = next(iter(results.values()))
        report = compare(stage, options, results)
        self.report.parity[name] = {
            "measured": report.measured,
            "passed": report.passed,
            "weights": report.weight_rel_diff,
        }


def _stages(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGE_NAMES]
    if unknown or not names:
        given = ", ".join(unknown) or "(none)"
        raise argparse.ArgumentTypeError(
            f"unknown stage(s) {given}; choose from {', '.join(STAGE_NAMES)}"
        )
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", help="the MNIST files (default: $MLP_BENCH_DATA_DIR)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--device", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--stages", type=_stages, default=list(STAGE_NAMES))
    parser.add_argument("--budget-s", type=float, default=420.0)
    args = parser.parse_args()
    try:
        report = Check(args).run()
    except BenchError as error:  # exit 2, as for bad arguments; 1 is a check that failed
        print(f"gpu_check: {error}", file=sys.stderr)
        sys.exit(2)
    print("\n".join(report.lines()))
    sys.exit(0 if report.passed else 1)


if __name__ == "__main__":
    main()
