"""The GPU check script end to end: on a GPU where there is one, else its CPU rehearsal."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from backends import is_installed
from tests.conftest import ROOT, gpu_available

needs_torch = pytest.mark.skipif(not is_installed("torch"), reason="torch not installed")


def _gpu_check(data_dir: Path, out: Path, *options: str) -> tuple[int, str, dict[str, Any]]:
    """Run the script; its exit status, stderr and JSON report."""
    command = [sys.executable, "-m", "bench.gpu_check", "--data-dir", str(data_dir)]
    done = subprocess.run(
        [*command, "--out", str(out), *options],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    report = json.loads((out / "gpu_check.json").read_text()) if done.returncode < 2 else {}
    return done.returncode, done.stderr, report


def _rehearse(data_dir: Path, out: Path, *options: str) -> tuple[int, str, dict[str, Any]]:
    """The script's CPU rehearsal (--device cpu)."""
    return _gpu_check(data_dir, out, "--device", "cpu", *options)


@needs_torch
@pytest.mark.gpu
@pytest.mark.skipif(not is_installed("torch") or not gpu_available("torch"), reason="no GPU")
def test_gpu_check_writes_its_table(data_dir: Path, tmp_path: Path) -> None:
    code, stderr, report = _gpu_check(data_dir, tmp_path, "--epochs", "2")
    assert code == 0, stderr
    assert report["peaks"]["gpu"] > report["peaks"]["cpu"]
    assert report["bitwise"] == "identical"
    assert all(v["passed"] for k, v in report["parity"].items() if "float64" in k)


@needs_torch
def test_the_cpu_rehearsal_runs_every_item_but_the_gpu_only_rows(
    data_dir: Path, tmp_path: Path
) -> None:
    code, stderr, report = _rehearse(data_dir, tmp_path, "--epochs", "2", "--stages", "relu-xavier")
    assert code == 0, stderr
    assert report["finished"] and report["passed"] and report["bitwise"] == "identical"
    outcomes = {row["cell"]: row["outcome"] for row in report["rows"]}
    assert outcomes == {
        "relu-xavier/torch/cpu": "converged",
        "relu-xavier/torch/cpu cuda-graphs": "skipped: GPU only",
        "relu-xavier/torch/cpu tf32": "skipped: GPU only",
    }
    assert report["rows"][0]["samples_per_s"] > 0
    assert set(report["parity"]) == {
        f"torch/cpu vs torch/cpu relu-xavier {dtype}" for dtype in ("float64", "float32")
    }
    table = (tmp_path / "gpu_table.txt").read_text()
    assert table.splitlines()[-1] == "check passed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_table.txt"]


@needs_torch
def test_items_past_the_budget_are_listed_as_skipped_and_fail_the_check(
    data_dir: Path, tmp_path: Path
) -> None:
    code, _, report = _rehearse(data_dir, tmp_path, "--stages", "adam", "--budget-s", "0")
    assert code == 1
    assert report["finished"] and report["peaks"]["cpu"] > 0 and not report["passed"]
    assert report["skipped"] == [
        "adam/torch/cpu",
        "bitwise rerun",
        "parity adam float64",
        "parity adam float32",
    ]
    assert "skipped (budget spent): bitwise rerun" in (tmp_path / "gpu_table.txt").read_text()


@needs_torch
def test_a_run_cut_short_leaves_what_it_measured_marked_unfinished(
    data_dir: Path, tmp_path: Path
) -> None:
    command = [sys.executable, "-m", "bench.gpu_check", "--data-dir", str(data_dir)]
    check = subprocess.Popen(
        [*command, "--out", str(tmp_path), "--device", "cpu", "--stages", "relu-xavier"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "gpu_check.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)  # the first save comes once the peaks are measured
    finally:
        check.kill()
        check.wait()
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["peaks"]["cpu"] > 0
    assert not report["finished"] and not report["passed"]
    table = (tmp_path / "gpu_table.txt").read_text().splitlines()
    assert table[-1] == "check unfinished (cut short?)"


def test_a_bad_data_dir_is_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "no-mnist"
    empty.mkdir()
    (empty / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    code, stderr, _ = _rehearse(empty, tmp_path / "out")
    assert code == 2
    assert stderr.startswith("gpu_check: ") and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
