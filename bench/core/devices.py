"""Which devices this machine has, found without importing a framework in this process.

`nvidia-smi` says whether a GPU is attached; it does not say whether the frameworks can use it
(CUDA_VISIBLE_DEVICES may hide it, a wheel may be CPU-only, a driver too old for the wheel's
CUDA). So a GPU counts only when each framework that will run on it sees one, asked in a
subprocess (importing a framework here would pin its thread pools and GPU memory for good).
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.core.errors import BenchError

DEVICE_CHOICES = ("cpu", "gpu", "auto")
PROBE_TIMEOUT_S = 180.0  # importing TensorFlow with its CUDA libraries can take a minute


def gpu_names() -> list[str]:
    """NVIDIA GPUs as `nvidia-smi -L` lists them; empty where there is none or no driver."""
    listing = _nvidia_smi("-L")
    return [line.strip() for line in listing.splitlines() if line.startswith("GPU ")]


def gpu_driver_version() -> str:
    """The NVIDIA driver's version (not CUDA's), or "none"."""
    versions = _nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader").split()
    return versions[0] if versions else "none"


def _nvidia_smi(*args: str) -> str:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return ""
    try:
        done = subprocess.run([smi, *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout if done.returncode == 0 else ""


def cuda_hidden() -> str | None:
    """Why CUDA_VISIBLE_DEVICES hides every GPU, or None. CUDA reads the list up to its first
    invalid entry: an empty value, or one that starts with a negative index, leaves none."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    first = value.split(",")[0].strip()
    if first == "" or (first.lstrip("-").isdigit() and first.startswith("-")):
        return f"CUDA_VISIBLE_DEVICES={value!r} hides every GPU"
    return None


@functools.cache
def framework_sees_gpu(backend: str) -> bool:
    """Whether the backend's framework, imported in a fresh process, sees a CUDA GPU."""
    code = f"from backends import load_backend; print(load_backend({backend!r}).visible_gpus())"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return False
    lines = done.stdout.split()
    return done.returncode == 0 and bool(lines) and lines[-1].isdigit() and int(lines[-1]) > 0


@dataclass(frozen=True)
class DeviceChoice:
    """The concrete devices; `note` says why `auto` took the CPU although a GPU is attached."""

    devices: list[str]
    note: str | None = None


def why_no_gpu(backends: list[str]) -> str | None:
    """Why the given backends cannot run on a GPU here, or None when all of them can."""
    if not gpu_names():
        return "this machine has no NVIDIA GPU (nvidia-smi lists none)"
    hidden = cuda_hidden()
    if hidden:
        return hidden
    blind = [name for name in backends if not framework_sees_gpu(name)]
    if blind:
        return (
            f"{', '.join(blind)} sees no CUDA GPU (a CPU-only build, or a driver older than"
            " its CUDA)"
        )
    return None


def resolve_devices(choices: list[str], backends: list[str]) -> DeviceChoice:
    """Map --device values to concrete devices: auto is the GPU where every backend sees one."""
    for choice in choices:
        if choice not in DEVICE_CHOICES:
            raise BenchError(f"--device {choice!r} is not one of {', '.join(DEVICE_CHOICES)}")
    reason = why_no_gpu(backends) if {"gpu", "auto"} & set(choices) else None
    if "gpu" in choices and reason:
        raise BenchError(f"--device gpu: {reason}; use --device cpu")
    devices: list[str] = []
    for choice in choices:
        device = ("cpu" if reason else "gpu") if choice == "auto" else choice
        if device not in devices:
            devices.append(device)
    # Silent on a machine without a GPU; said where one is attached but cannot be used.
    note = f"--device auto: the CPU, because {reason}" if reason and gpu_names() else None
    return DeviceChoice(devices, note)


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
