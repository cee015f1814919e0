"""The devices an invocation's cells run on, from --device: a GPU counts only where it is
attached and not hidden (bench.core.devices) and each framework that will run on it sees one
(backends.sees_gpu): CUDA_VISIBLE_DEVICES may hide it, a wheel may be CPU-only, a driver too
old for the wheel's CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

from backends import sees_gpu
from bench.core.devices import DEVICE_CHOICES, cuda_hidden, gpu_names
from bench.core.errors import BenchError


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
    blind = [name for name in backends if not sees_gpu(name)]
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
