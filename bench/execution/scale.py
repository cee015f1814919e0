"""`nox -s scale -- --tracking-uri http://HOST:PORT` (`python -m bench.execution.scale`): what
the Ray executor and a shared tracking server cost, measured, to size a sweep from.

1. Per-cell overhead: `bench run` of 1 and of K one-epoch cells, locally and through Ray; the
   per-cell time is (T_K - T_1) / (K - 1), the fixed start-up T_1 less one cell.
2. Recording throughput: one real cell's result recorded M times by one driver, into the
   server and into a SQLite store: cells per minute that one driver can write.
3. A sweep: N one-epoch cells (`--seeds N`) through Ray into the server, every run checked.

Every figure is from this machine only (its CPU is printed); run it alone: a second process
on the cores slows the cells it times.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.core.devices import available_cores, cpu_model
from bench.core.options import Options
from bench.core.spec import load_stage, with_epochs
from bench.core.types import Cell, CellRun
from bench.execution.matrix import LocalExecutor
from bench.recording.tracking import MatrixRecord, Tracker

STAGE = "relu-xavier"


def _cells(backend: str, seeds: int, data_dir: str) -> list[str]:
    """`bench run` arguments for `seeds` one-epoch cells of the stage on one backend."""
    cells = ["--stage", STAGE, "--backend", backend, "--epochs", "1", "--seeds", str(seeds)]
    return [*cells, "--data-dir", data_dir]


def _bench_run(args: Sequence[str]) -> float:
    """Seconds one `python -m bench run ARGS` took, start to exit; it must succeed."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "bench", "run", *args], capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"bench run {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return seconds


def overhead(backend: str, data_dir: str, cells: int, ray_address: str | None) -> list[str]:
    """Per-cell and start-up seconds of each executor, from 1 and `cells` one-epoch cells."""
    lines = [f"1. per-cell overhead: {STAGE} on {backend}, 1 epoch, --no-peak, SQLite store"]
    lines.append("executor  cells  wall s  per cell s  start-up s")
    per_cell = {}
    for executor in ("local", "ray"):
        extra = ["--executor", executor]
        if executor == "ray" and ray_address:
            extra += ["--ray-address", ray_address]
        walls = {}
        for count in (1, cells):
            with tempfile.TemporaryDirectory(prefix="mlp-bench-scale-") as tmp:
                store = ["--tracking-uri", f"sqlite:///{tmp}/mlflow.db"]
                walls[count] = _bench_run(
                    [*extra, *_cells(backend, count, data_dir), "--no-peak", *store]
                )
        per_cell[executor] = (walls[cells] - walls[1]) / (cells - 1)
        startup = walls[1] - per_cell[executor]
        lines.append(
            f"{executor:<8}  {cells:>5}  {walls[cells]:>6.1f}  {per_cell[executor]:>10.2f}"
            f"  {startup:>10.1f}"
        )
    lines.append(f"Ray's overhead per cell: {per_cell['ray'] - per_cell['local']:+.2f} s")
    return lines


def _one_cell(backend: str, data_dir: str, folder: Path) -> CellRun:
    options = Options(data_dir=data_dir, threads=available_cores(), epochs=1)
    cell = Cell(STAGE, backend, "cpu", 0)
    run = LocalExecutor().execute(cell, options, folder, lambda record: None)
    if run.result is None:
        raise SystemExit(f"the cell to record failed: {run.error}")
    run.timings["started_at"] = time.perf_counter()
    return run


def throughput(uri: str, run: CellRun, count: int) -> float:
    """Cells per minute one driver records into `uri`: a parent, then `count` cells with their
    epochs, params, data inputs, artifacts and final metrics, each ended FINISHED."""
    spec = with_epochs(load_stage(STAGE), 1)
    options = Options(data_dir="", threads=available_cores(), epochs=1)
    tracker = Tracker(uri, "mlp-bench-scale")
    parent = tracker.start_parent("scale: recording throughput", {}, {"kind": "scale"})
    cells = [Cell(STAGE, run.cell.backend, "cpu", seed) for seed in range(count)]
    record = MatrixRecord(tracker, parent, {STAGE: spec}, cells, options)
    start = time.perf_counter()
    for cell in cells:
        run_id = record.start_cell(cell)
        assert run.result is not None
        for epoch in run.result.epochs:
            record.log_epoch(run_id, epoch)
        record.finish_cell(run_id, CellRun(cell, run.result, None, 1.0, run.log_path))
    seconds = time.perf_counter() - start
    tracker.end(parent, "FINISHED")
    return 60 * count / seconds


def sweep(uri: str, backend: str, data_dir: str, cells: int, address: str | None) -> list[str]:
    """`cells` one-epoch cells through Ray into the server; each run checked."""
    tag = f"scale={time.strftime('%Y%m%d-%H%M%S')}"
    extra = ["--ray-address", address] if address else []
    where = ["--tracking-uri", uri, "--experiment", "mlp-bench-scale", "--tag", tag]
    wall = _bench_run(["--executor", "ray", *extra, *_cells(backend, cells, data_dir), *where])
    reader = Tracker(uri, None).reader
    experiment = reader.experiment_id("mlp-bench-scale")
    assert experiment is not None  # the run above made it
    key, value = tag.split("=")
    [parent] = reader.search([experiment], f"tags.{key} = '{value}'")
    runs = reader.invocation_runs(parent, "cell")
    finished = sum(r.status == "FINISHED" for r in runs)
    walls = sorted(r.metrics.get("wall_seconds", 0.0) for r in runs)
    logging = sum(r.metrics.get("time_mlflow_logging_seconds", 0.0) for r in runs)
    return [
        f"3. sweep: {cells} cells ({STAGE}, {backend}, 1 epoch) through Ray into {uri}",
        f"   {wall:.0f} s wall, {60 * cells / wall:.1f} cells/min; {finished} of {cells}"
        f" runs FINISHED (parent {parent.run_id}, {parent.status})",
        f"   cell wall (worker process): median {walls[len(walls) // 2]:.2f} s; driver's"
        f" recording: {logging:.1f} s in all, {logging / cells:.2f} s a cell",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.execution.scale", description=__doc__)
    parser.add_argument("--tracking-uri", required=True, help="the shared server, http://...")
    parser.add_argument("--ray-address", help="a running cluster; default: a local Ray")
    parser.add_argument("--backend", default="jax")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--overhead-cells", type=int, default=8)
    parser.add_argument("--record-cells", type=int, default=100)
    parser.add_argument("--sweep-cells", type=int, default=200)
    args = parser.parse_args(argv)
    print(f"machine: {cpu_model()}, {available_cores()} cores; {time.strftime('%F %T')}")
    for line in overhead(args.backend, args.data_dir, args.overhead_cells, args.ray_address):
        print(line, flush=True)
    with tempfile.TemporaryDirectory(prefix="mlp-bench-scale-") as tmp:
        run = _one_cell(args.backend, args.data_dir, Path(tmp))
        print(f"2. recording throughput: one driver, {args.record_cells} cells each")
        for uri in (args.tracking_uri, f"sqlite:///{tmp}/mlflow.db"):
            rate = throughput(uri, run, args.record_cells)
            print(f"   {uri}: {rate:,.0f} cells/min ({60 / rate:.3f} s a cell)", flush=True)
    if args.sweep_cells:
        for line in sweep(
            args.tracking_uri, args.backend, args.data_dir, args.sweep_cells, args.ray_address
        ):
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
