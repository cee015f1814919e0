"""The GPU check script: on a GPU where there is one, else its CPU rehearsal, with GPU faults
injected into real workers where only a failing GPU would take a path."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backends import is_installed
from bench.commands.gpu_check import parse_args, settings
from bench.core.data import CACHE_DIR_ENV
from bench.core.datasets import DATASETS
from bench.core.datasets.mnist import MNIST
from bench.core.devices import gpu_names
from bench.execution.gpu_survey import GPU_ONLY, Check, Report, Row, losses_verdict
from tests.conftest import ROOT, gpu_available
from tests.faults import inject

needs_torch = pytest.mark.skipif(not is_installed("torch"), reason="torch not installed")

GPU_PLAN = [
    "peak torch gpu",
    "attainable torch gpu",
    "attainable torch gpu cuda-graphs",
    "relu-xavier/torch/gpu",
    "adam/torch/gpu",
    "adam/torch/gpu cuda-graphs",
    "dropout/torch/gpu",
    "dropout/torch/gpu cuda-graphs",
    "bitwise rerun torch",
    "parity relu-xavier float64 torch",
    "parity adam float64 torch",
    "relu-xavier/torch/gpu cuda-graphs",
    "peak torch gpu tf32",
    "relu-xavier/torch/gpu tf32",
    "relu-normal/torch/gpu",
    "parity relu-normal float64 torch",
    "parity dropout float64 torch",
    "parity relu-normal float32 torch",
    "parity relu-xavier float32 torch",
    "parity adam float32 torch",
    "parity dropout float32 torch",
    "peak torch cpu",
]
TORCH = ("--backend", "torch")


def _gpu_check(
    data_dir: Path, out: Path, *options: str, env: dict[str, str] | None = None
) -> tuple[int, str, dict[str, Any]]:
    """Run the check as documented (`mlp-bench gpu-check`); its exit status, stderr and JSON
    report (strict JSON: no Infinity)."""
    command = [sys.executable, "-m", "bench", "gpu-check", "--data-dir", str(data_dir)]
    done = subprocess.run(
        [*command, "--out", str(out), *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    report = {}
    if done.returncode < 2:
        report = json.loads((out / "gpu_check.json").read_text(), parse_constant=_no_constant)
    return done.returncode, done.stderr, report


def _no_constant(name: str) -> None:
    raise AssertionError(f"gpu_check.json holds {name}, which is not JSON")


def _rehearse(
    data_dir: Path, out: Path, *options: str, env: dict[str, str] | None = None
) -> tuple[int, str, dict[str, Any]]:
    """The script's CPU rehearsal (--device cpu)."""
    return _gpu_check(data_dir, out, "--device", "cpu", *options, env=env)


@needs_torch
@pytest.mark.gpu
@pytest.mark.skipif(not is_installed("torch") or not gpu_available("torch"), reason="no GPU")
def test_gpu_check_writes_its_table(data_dir: Path, tmp_path: Path) -> None:
    code, stderr, report = _gpu_check(data_dir, tmp_path, "--epochs", "2", *TORCH)
    assert code == 0, stderr
    assert report["peaks"]["torch gpu"] > report["peaks"]["torch cpu"]
    assert report["peaks"]["torch gpu tf32"] > report["peaks"]["torch gpu"]
    assert set(report["graphs"].values()) == {"identical"}
    assert report["bitwise"] == {"dropout/torch/gpu cuda-graphs": "identical"}
    assert all(v["passed"] for k, v in report["parity"].items() if "float64" in k)
    expected = {"torch framework_version", "torch cuda_version", "gpu_model", "driver"}
    assert expected <= set(report["environment"])


def test_the_plan_puts_the_most_valuable_items_first() -> None:
    check = Check(settings(parse_args(["--out", "unused", "--device", "gpu", *TORCH])))
    assert [item.name for item in check.plan()] == GPU_PLAN


def test_the_cpu_rehearsal_plans_the_same_order_without_gpu_peaks() -> None:
    check = Check(settings(parse_args(["--out", "unused", "--device", "cpu", *TORCH])))
    expected = [
        n.replace("/gpu", "/cpu").replace("torch gpu", "torch cpu")
        for n in GPU_PLAN[:-1]
        if n != "peak torch gpu tf32"
    ]
    assert [item.name for item in check.plan()] == expected


def test_two_backends_interleave_by_value_and_parity_covers_the_pair() -> None:
    """JAX beside PyTorch: both peaks, then each stage on both; CUDA graphs only where the
    backend declares them; parity of each against its CPU and of the pair on the GPU."""
    check = Check(
        settings(parse_args(["--out", "unused", "--backend", "torch", "--backend", "jax"]))
    )
    names = [item.name for item in check.plan()]
    assert names[:8] == [
        "peak torch gpu",
        "peak jax gpu",
        "attainable torch gpu",
        "attainable jax gpu",
        "attainable torch gpu cuda-graphs",
        "relu-xavier/torch/gpu",
        "relu-xavier/jax/gpu",
        "adam/torch/gpu",
    ]
    assert not [n for n in names if "jax" in n and "cuda-graphs" in n]
    assert {"bitwise rerun torch", "bitwise rerun jax"} <= set(names)
    first_parity = names.index("parity relu-xavier float64 torch")
    assert names[first_parity : first_parity + 3] == [
        "parity relu-xavier float64 torch",
        "parity relu-xavier float64 jax",
        "parity relu-xavier float64 torch vs jax",
    ]
    assert names[-2:] == ["peak torch cpu", "peak jax cpu"]


@needs_torch
@pytest.mark.slow
def test_the_cpu_rehearsal_runs_every_item_but_the_gpu_only_rows(
    data_dir: Path, tmp_path: Path
) -> None:
    code, stderr, report = _rehearse(
        data_dir, tmp_path, "--epochs", "2", "--stages", "relu-xavier", *TORCH
    )
    assert code == 0, stderr
    assert report["finished"] and report["passed"]
    assert report["bitwise"] == {"relu-xavier/torch/cpu": "identical"}
    outcomes = {row["cell"]: row["outcome"] for row in report["rows"]}
    assert outcomes == {
        "relu-xavier/torch/cpu": "converged",
        "relu-xavier/torch/cpu cuda-graphs": GPU_ONLY,
        "relu-xavier/torch/cpu tf32": GPU_ONLY,
    }
    assert report["graphs"] == {"relu-xavier/torch": GPU_ONLY}
    first = report["rows"][0]
    assert first["samples_per_s"] > 0 and first["peak"] == "torch cpu" and first["roofline"] > 0
    # Against the step's products alone, on the same path (eager: graphs are GPU only).
    # (Not below 1 for sure: a slow phase of a busy machine can fall on the limit's burst.)
    assert set(report["attainable"]) == {"torch cpu"}
    limit = report["attainable"]["torch cpu"]
    assert first["attainable"] == pytest.approx(first["samples_per_s"] / limit)
    assert len(first["step_losses_sha256"]) == 64
    assert set(report["parity"]) == {
        f"torch/cpu vs torch/cpu relu-xavier {dtype}" for dtype in ("float64", "float32")
    }
    assert report["environment"]["torch framework_version"].startswith("2.")
    table = (tmp_path / "gpu_table.txt").read_text()
    assert table.splitlines()[-1] == "check passed"
    assert "bitwise rerun of relu-xavier/torch/cpu: identical" in table
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_table.txt"]


@needs_torch
def test_items_past_the_budget_are_listed_as_skipped_and_fail_the_check(
    data_dir: Path, tmp_path: Path
) -> None:
    code, _, report = _rehearse(data_dir, tmp_path, "--stages", "adam", "--budget-s", "0", *TORCH)
    assert code == 1
    assert report["finished"] and not report["passed"] and report["peaks"] == {}
    assert report["skipped"] == [
        "peak torch cpu",
        "attainable torch cpu",
        "attainable torch cpu cuda-graphs",
        "adam/torch/cpu",
        "adam/torch/cpu cuda-graphs",
        "bitwise rerun torch",
        "parity adam float64 torch",
        "parity adam float32 torch",
    ]
    table = (tmp_path / "gpu_table.txt").read_text()
    assert "skipped (budget spent): bitwise rerun torch" in table


@needs_torch
@pytest.mark.slow
def test_a_failing_cell_keeps_its_exception_line_and_its_log_tail(
    data_dir: Path, tmp_path: Path
) -> None:
    """A CUDA error's last log line is a hint; the row keeps the line that says what failed."""
    env = inject(
        tmp_path / "fault", "bench.execution.runner", "run_cell", "args[0].stage == 'adam'"
    )
    out = tmp_path / "out"
    # One epoch: the rows' outcomes and the failure are asserted, no speed (that needs two).
    code, stderr, report = _rehearse(
        data_dir, out, "--epochs", "1", "--stages", "relu-xavier,adam", *TORCH, env=env
    )
    assert code == 1, stderr
    assert report["finished"] and not report["passed"]
    outcomes = {row["cell"]: row["outcome"] for row in report["rows"]}
    assert outcomes["relu-xavier/torch/cpu"] == "converged"
    expected = (
        "FAILED: RuntimeError: CUDA error: an illegal memory access was encountered"
        " (log tail: failed_logs.txt)"
    )
    assert outcomes["adam/torch/cpu"] == expected
    assert "TORCH_USE_CUDA_DSA" not in outcomes["adam/torch/cpu"]
    logs = (out / "failed_logs.txt").read_text()
    assert "=== adam/torch/cpu: RuntimeError: CUDA error" in logs
    assert "Traceback (most recent call last)" in logs and "TORCH_USE_CUDA_DSA" in logs
    assert report["parity"]["torch/cpu vs torch/cpu relu-xavier float64"]["passed"]


@needs_torch
@pytest.mark.slow
def test_a_failed_peak_is_an_item_of_its_own_and_the_rows_go_on(
    data_dir: Path, tmp_path: Path
) -> None:
    env = inject(tmp_path / "fault", "bench.execution.peaks", "measure_peak")
    out = tmp_path / "out"
    code, stderr, report = _rehearse(
        data_dir, out, "--epochs", "2", "--stages", "relu-xavier", *TORCH, env=env
    )
    assert code == 1, stderr
    assert report["finished"] and not report["passed"] and report["peaks"] == {}
    assert "illegal memory access" in report["peak_failures"]["torch cpu"]
    row = report["rows"][0]
    assert row["outcome"] == "converged" and row["samples_per_s"] > 0
    assert row["roofline"] is None and row["peak"] is None
    table = (out / "gpu_table.txt").read_text()
    assert "torch cpu FAILED: measuring peak on torch/cpu failed: RuntimeError: CUDA" in table
    assert "roofline n/a (no peak measured)" in table
    assert report["bitwise"] == {"relu-xavier/torch/cpu": "identical"}


@needs_torch
@pytest.mark.slow
def test_a_run_cut_short_leaves_what_it_measured_marked_unfinished(
    data_dir: Path, tmp_path: Path
) -> None:
    # Through `python -m bench.gpu_check`, the check's own module, which keeps working.
    command = [sys.executable, "-m", "bench.gpu_check", "--data-dir", str(data_dir)]
    check = subprocess.Popen(
        [*command, "--out", str(tmp_path), "--device", "cpu", "--stages", "relu-xavier", *TORCH],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "gpu_check.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)  # the first save comes once the peak is measured
    finally:
        check.kill()
        check.wait()
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["peaks"]["torch cpu"] > 0
    assert not report["finished"] and not report["passed"]
    table = (tmp_path / "gpu_table.txt").read_text().splitlines()
    assert table[-1] == "check unfinished (cut short?)"


def test_a_bad_data_dir_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "no-mnist"
    empty.mkdir()
    (empty / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    code, stderr, _ = _rehearse(empty, tmp_path / "out")
    assert code == 2
    assert stderr.startswith("error: ") and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_missing_data_is_downloaded_as_by_every_command(
    data_dir: Path, mirror: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data folder missing two files gets them from the data set's mirrors (here a real HTTP
    server on loopback serving the real files), verified, before the check's first item."""
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        shutil.copy(data_dir / name, partial / name)
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(MNIST, mirrors=(mirror + "good/",)))
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    where = ["--data-dir", str(partial), "--out", str(tmp_path / "out"), "--device", "cpu"]
    args = parse_args([*where, "--stages", "relu-xavier", "--budget-s", "0", *TORCH])
    report = Check(settings(args)).run()  # a budget of 0 s: every item is listed as skipped
    for f in MNIST.files:
        assert (partial / f.name).read_bytes() == (data_dir / f.name).read_bytes()
    assert report.finished and report.skipped and not report.rows


@pytest.mark.skipif(bool(gpu_names()), reason="this machine has a GPU")
def test_device_gpu_without_a_gpu_is_one_line(data_dir: Path, tmp_path: Path) -> None:
    code, stderr, _ = _gpu_check(data_dir, tmp_path / "out")
    assert code == 2 and "no NVIDIA GPU" in stderr and len(stderr.strip().splitlines()) == 1


def test_identical_losses_are_compared_as_bits() -> None:
    losses = np.array([2.3, 1.1, np.nan], np.float32)
    assert losses_verdict(losses, losses.copy()) == "identical"  # NaN bits compare equal
    moved = losses.copy()
    moved[1] = np.nextafter(moved[1], np.float32(2))
    assert losses_verdict(losses, moved).startswith("DIFFERENT from step 2")
    assert losses_verdict(losses, losses[:2]).startswith("DIFFERENT: 3 float32 against 2")


def _passing_report(tmp_path: Path) -> Report:
    report = Report(out=tmp_path, device="gpu", peaks={"torch gpu": 50_000.0}, finished=True)
    report.rows = [Row("adam/torch/gpu", "converged", 0.97)]
    report.graphs = {"adam/torch": "identical", "dropout/torch": "identical"}
    report.bitwise = {"dropout/torch/gpu cuda-graphs": "identical"}
    report.parity = {"x float64": {"measured": 0.0, "passed": True, "weights": 0.0}}
    return report


def test_the_verdict_counts_graphs_peaks_and_the_rerun(tmp_path: Path) -> None:
    report = _passing_report(tmp_path)
    assert report.passed
    report.graphs["dropout/torch"] = "DIFFERENT from step 4"
    assert not report.passed
    report = _passing_report(tmp_path)
    report.peak_failures["torch gpu tf32"] = "measuring failed"
    assert not report.passed
    report = _passing_report(tmp_path)
    report.bitwise["dropout/jax/gpu"] = "DIFFERENT from step 1"
    assert not report.passed
    report.bitwise = {}  # no rerun ran: nothing proved
    assert not report.passed


def test_the_report_is_strict_json_when_a_difference_is_infinite(tmp_path: Path) -> None:
    report = _passing_report(tmp_path)
    report.parity["y float32"] = {"measured": float("inf"), "passed": False, "weights": np.inf}
    report.save()
    saved = json.loads((tmp_path / "gpu_check.json").read_text(), parse_constant=_no_constant)
    assert saved["parity"]["y float32"]["measured"] is None
    assert "parity y float32: inf (FAIL)" in (tmp_path / "gpu_table.txt").read_text()


@pytest.mark.skipif(
    len([b for b in ("torch", "jax") if is_installed(b)]) < 2, reason="needs torch and jax"
)
@pytest.mark.slow
def test_the_rehearsal_with_jax_beside_torch_checks_the_pair(
    data_dir: Path, tmp_path: Path
) -> None:
    """What a GPU machine with PyTorch and JAX runs, rehearsed on the CPU: JAX's rows, its
    rerun, its parity against itself and against PyTorch, in float64 and float32. One epoch:
    outcomes, reruns and parity are asserted, no speed (that needs two)."""
    code, stderr, report = _rehearse(
        data_dir,
        tmp_path,
        "--epochs",
        "1",
        "--stages",
        "adam",
        "--backend",
        "torch",
        "--backend",
        "jax",
    )
    assert code == 0, stderr
    assert report["passed"] and report["backends"] == ["torch", "jax"]
    outcomes = {row["cell"]: row["outcome"] for row in report["rows"]}
    assert outcomes["adam/jax/cpu"] == "converged" and "adam/jax/cpu cuda-graphs" not in outcomes
    assert report["bitwise"] == {"adam/torch/cpu": "identical", "adam/jax/cpu": "identical"}
    pair = report["parity"]["torch/cpu vs jax/cpu adam float32"]
    assert pair["passed"] and pair["measured"] == 0.0  # float32 parity: the same bits
    assert report["parity"]["torch/cpu vs jax/cpu adam float64"]["passed"]
    assert report["environment"]["jax framework_version"].startswith("0.")
