"""Which device `auto` and `gpu` mean: nvidia-smi, CUDA_VISIBLE_DEVICES and the frameworks.

A GPU is faked where only its listing matters: an `nvidia-smi` on PATH that lists an H200. The
frameworks are asked for real, in subprocesses (here: CPU builds that see no GPU).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from backends import installed_backends, is_installed, sees_gpu
from bench.core.devices import cuda_hidden, gpu_names
from bench.core.errors import BenchError
from bench.execution.device_choice import resolve_devices
from tests.conftest import ROOT

BENCH_RUN = [sys.executable, "-m", "bench", "run", "--backend", "torch"]
FAKE_SMI = """#!/bin/sh
case "$1" in
  -L) echo "GPU 0: NVIDIA H200 (UUID: GPU-00000000-0000-0000-0000-000000000000)" ;;
  *) echo "580.159.04" ;;
esac
"""


@pytest.fixture
def fake_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """nvidia-smi lists a GPU; the frameworks are the installed CPU builds. The environment
    to run a command under."""
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text(FAKE_SMI)
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{smi.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    sees_gpu.cache_clear()
    return dict(os.environ)


@pytest.mark.parametrize(
    ("value", "hidden"),
    [("", True), ("-1", True), ("-1,0", True), (" ", True), ("0", False), ("GPU-1a2b", False)],
)
def test_cuda_visible_devices_that_hide_every_gpu(
    value: str, hidden: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert (cuda_hidden() is not None) == hidden


@pytest.mark.skipif(bool(gpu_names()), reason="this machine has a GPU")
def test_auto_is_the_cpu_without_a_gpu_and_says_nothing() -> None:
    choice = resolve_devices(["auto"], installed_backends())
    assert choice.devices == ["cpu"] and choice.note is None
    with pytest.raises(BenchError, match="no NVIDIA GPU"):
        resolve_devices(["gpu"], installed_backends())


@pytest.mark.parametrize("value", ["", "-1"])
def test_an_empty_or_negative_cuda_visible_devices_means_the_cpu(
    value: str, fake_gpu: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    choice = resolve_devices(["auto"], ["torch"])
    assert choice.devices == ["cpu"]
    assert choice.note is not None and "CUDA_VISIBLE_DEVICES" in choice.note
    with pytest.raises(BenchError, match="hides every GPU; use --device cpu"):
        resolve_devices(["gpu"], ["torch"])


@pytest.mark.skipif(not is_installed("torch"), reason="torch not installed")
def test_a_gpu_that_the_framework_cannot_use_is_not_chosen(fake_gpu: dict[str, str]) -> None:
    """nvidia-smi lists a GPU, the CPU build of torch sees none: auto is the CPU, and says why."""
    if sees_gpu("torch"):
        pytest.skip("torch sees a GPU here")
    choice = resolve_devices(["auto", "cpu"], ["torch"])
    assert choice.devices == ["cpu"]
    assert choice.note == (
        "--device auto: the CPU, because torch sees no CUDA GPU (a CPU-only build, or a driver"
        " older than its CUDA)"
    )
    with pytest.raises(BenchError, match="--device gpu: torch sees no CUDA GPU"):
        resolve_devices(["gpu"], ["torch"])


@pytest.mark.skipif(not is_installed("torch"), reason="torch not installed")
def test_the_command_line_names_the_framework_that_sees_no_gpu(
    fake_gpu: dict[str, str], tmp_path: Path
) -> None:
    done = subprocess.run(
        [*BENCH_RUN, "--device", "gpu", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=fake_gpu,
    )
    if sees_gpu("torch"):
        pytest.skip("torch sees a GPU here")
    assert done.returncode == 2
    assert done.stderr.startswith("error: --device gpu: torch sees no CUDA GPU")
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.db").exists()
