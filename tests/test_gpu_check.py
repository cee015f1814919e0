"""The GPU check script end to end; skipped where PyTorch sees no GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from backends import is_installed
from tests.conftest import ROOT, gpu_available, mnist_dir

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not is_installed("torch") or not gpu_available("torch"), reason="no GPU visible to torch"
    ),
]


def test_gpu_check_writes_its_table(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.gpu_check",
            "--data-dir",
            str(mnist_dir()),
            "--out",
            str(tmp_path),
            "--epochs",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["peaks"]["gpu"] > report["peaks"]["cpu"]
    assert report["bitwise"] is True
    assert all(v["passed"] for k, v in report["parity"].items() if "float64" in k)
