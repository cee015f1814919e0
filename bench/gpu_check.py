"""The GPU check: `python -m bench.gpu_check --data-dir D --out DIR` (PyTorch only, no MLflow).

Made for a lent GPU machine that has PyTorch but neither TensorFlow nor MLflow; runs in a few
minutes. It measures the peak float32 matmul rate on the GPU (and the CPU for scale), trains
every stage on torch/gpu (TF32 off, the default), the training stages again with CUDA graphs,
relu-xavier with TF32 on, adam twice to check bitwise reruns, and checks parity of torch/gpu
against torch/cpu (float64 over one epoch, float32 over 50 steps). It writes gpu_table.txt and
gpu_check.json into --out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from bench.matrix import LocalExecutor
from bench.parity import compare, parity_options
from bench.perf import flops_per_sample
from bench.runner import Cell, CellResult, RunOptions
from bench.spec import STAGE_NAMES, load_stage


def _cell(cell: Cell, options: RunOptions) -> CellResult:
    with tempfile.TemporaryDirectory(prefix="mlp-bench-gpu-") as tmp:
        run = LocalExecutor().execute(cell, options, Path(tmp), lambda record: None)
    if run.result is None:
        raise SystemExit(f"{cell.name} failed: {run.error}")
    return run.result


def _row(name: str, result: CellResult, peak: float) -> dict[str, Any]:
    speed = result.train_samples_per_s or 0.0
    gflops = speed * flops_per_sample(load_stage(result.cell.stage)) / 1e9
    return {
        "cell": name,
        "outcome": result.outcome,
        "test_accuracy": result.test_accuracy,
        "samples_per_s": speed,
        "train_gflops": gflops,
        "roofline": gflops / peak,
        "gpu_memory_mb": result.memory.get("peak_gpu_memory_mb", 0.0),
        "gpu_model": result.environment.get("gpu_model", "-"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    executor = LocalExecutor()
    with tempfile.TemporaryDirectory() as tmp:
        peaks = {
            d: executor.peak("torch", d, 16 if d == "cpu" else 1, Path(tmp)) for d in ("gpu", "cpu")
        }
    base = RunOptions(data_dir=args.data_dir, threads=4, epochs=args.epochs)
    rows = [
        _row(f"{s}/torch/gpu", _cell(Cell(s, "torch", "gpu", 0), base), peaks["gpu"])
        for s in STAGE_NAMES
    ]
    graphs = RunOptions(data_dir=args.data_dir, threads=4, epochs=args.epochs, cuda_graphs=True)
    rows += [
        _row(f"{s}/torch/gpu cuda-graphs", _cell(Cell(s, "torch", "gpu", 0), graphs), peaks["gpu"])
        for s in STAGE_NAMES
        if s != "relu-normal"
    ]
    tf32 = RunOptions(data_dir=args.data_dir, threads=4, epochs=args.epochs, tf32=True)
    rows.append(
        _row(
            "relu-xavier/torch/gpu tf32",
            _cell(Cell("relu-xavier", "torch", "gpu", 0), tf32),
            peaks["gpu"],
        )
    )
    first, again = (_cell(Cell("adam", "torch", "gpu", 1), base) for _ in range(2))
    bitwise = first.step_losses.tobytes() == again.step_losses.tobytes()
    parity = {}
    for dtype, steps in (("float64", 550), ("float32", 50)):
        options = parity_options(args.data_dir, 4, steps, dtype, 100)  # type: ignore[arg-type]
        for stage in STAGE_NAMES:
            results = {
                f"torch/{d}": _cell(Cell(stage, "torch", d, 0), options) for d in ("gpu", "cpu")
            }
            report = compare(stage, options, results)
            parity[f"{stage} {dtype}"] = {
                "measured": report.measured,
                "passed": report.passed,
                "weights": report.weight_rel_diff,
            }
    lines = [f"peak float32 matmul: gpu {peaks['gpu']:,.0f} GFLOP/s, cpu {peaks['cpu']:,.0f}"]
    lines += [
        f"{r['cell']:<32} {r['outcome']:<13} {100 * r['test_accuracy']:6.2f}%  "
        f"{r['samples_per_s']:>12,.0f} samples/s  {r['train_gflops']:8.1f} GFLOP/s  "
        f"roofline {r['roofline']:.4f}  {r['gpu_memory_mb']:.0f} MiB"
        for r in rows
    ]
    lines.append(f"bitwise rerun on GPU (adam seed 1): {'identical' if bitwise else 'DIFFERENT'}")
    lines += [
        f"parity torch/gpu vs torch/cpu {k}: {v['measured']:.3e} "
        f"({'PASS' if v['passed'] else 'FAIL'}), weights {v['weights']:.3e}"
        for k, v in parity.items()
    ]
    (out / "gpu_table.txt").write_text("\n".join(lines) + "\n")
    (out / "gpu_check.json").write_text(
        json.dumps({"peaks": peaks, "rows": rows, "bitwise": bitwise, "parity": parity}, indent=1)
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
