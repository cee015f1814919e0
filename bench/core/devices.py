"""Which devices this machine has, found without any framework: GPUs as `nvidia-smi` lists
them, whether CUDA_VISIBLE_DEVICES hides them, the CPU's model and cores.

Whether a framework can use an attached GPU is the backend's question (`backends.sees_gpu`);
`bench.execution.device_choice` puts the two together.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

DEVICE_CHOICES = ("cpu", "gpu", "auto")


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
