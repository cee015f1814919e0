"""Which devices this machine has, found without importing a framework."""

from __future__ import annotations

import shutil
import subprocess

from bench.errors import BenchError

DEVICE_CHOICES = ("cpu", "gpu", "auto")


def gpu_names() -> list[str]:
    """NVIDIA GPUs as `nvidia-smi -L` lists them; empty where there is none or no driver."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in listing.stdout.splitlines() if line.startswith("GPU ")]


def resolve_devices(choices: list[str]) -> list[str]:
    """Map --device values to concrete devices: auto is the GPU where present, else the CPU."""
    has_gpu = bool(gpu_names())
    devices: list[str] = []
    for choice in choices:
        if choice not in DEVICE_CHOICES:
            raise BenchError(f"--device {choice!r} is not one of {', '.join(DEVICE_CHOICES)}")
        if choice == "gpu" and not has_gpu:
            raise BenchError("--device gpu: this machine has no NVIDIA GPU; use --device cpu")
        device = ("gpu" if has_gpu else "cpu") if choice == "auto" else choice
        if device not in devices:
            devices.append(device)
    return devices
