"""Faults injected into real processes, for the paths that only a GPU failure, a hung worker or
a race takes.

A `sitecustomize.py` on PYTHONPATH runs at the start of every Python process that inherits the
environment: the command under test and each worker it spawns. It wraps one function of the
harness so that it raises what a failing GPU raises, hangs, or waits for other processes to
arrive; everything else runs for real.
"""

from __future__ import annotations

import os
from pathlib import Path

# What PyTorch raises after an illegal memory access: the cause on the first line, then hints.
CUDA_ERROR = (
    "CUDA error: an illegal memory access was encountered\n"
    "CUDA kernel errors might be asynchronously reported at some other API call, so the "
    "stacktrace below might be incorrect.\n"
    "For debugging consider passing CUDA_LAUNCH_BLOCKING=1\n"
    "Compile with `TORCH_USE_CUDA_DSA` to enable device-side assertions.\n"
)

_WRAP = """
import os
import time
from pathlib import Path

import {module} as _target

_original = _target.{function}


def _meet(folder, parties):
    # Wait until `parties` processes have arrived here (ten minutes at most).
    (folder / f"arrived-{{os.getpid()}}").touch()
    deadline = time.monotonic() + 600
    while len(list(folder.glob("arrived-*"))) < parties and time.monotonic() < deadline:
        time.sleep(0.005)


def _faulty(*args, **kwargs):
    if {condition}:
        {action}
    return _original(*args, **kwargs)


_target.{function} = _faulty
"""


def _environment(
    folder: Path, module: str, function: str, condition: str, action: str
) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    code = _WRAP.format(module=module, function=function, condition=condition, action=action)
    (folder / "sitecustomize.py").write_text(code)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def inject(
    folder: Path, module: str, function: str, condition: str = "True", message: str = CUDA_ERROR
) -> dict[str, str]:
    """The environment under which `module.function` raises RuntimeError(message) whenever
    `condition` (a Python expression over `args` and `kwargs`) holds."""
    action = f"raise RuntimeError({message!r})"
    return _environment(folder, module, function, condition, action)


def hang(folder: Path, module: str, function: str, condition: str = "True") -> dict[str, str]:
    """The environment under which `module.function` never returns when `condition` holds: a
    process stuck in a driver call or a deadlock."""
    return _environment(folder, module, function, condition, "time.sleep(10**6)")


def barrier(folder: Path, module: str, function: str, parties: int) -> dict[str, str]:
    """The environment under which each process that calls `module.function` waits there until
    `parties` processes have, so that they go on at the same moment (a race, provoked)."""
    action = f"_meet(Path({str(folder)!r}), {parties})"
    return _environment(folder, module, function, "True", action)


def killed(folder: Path, module: str, function: str, signum: int) -> dict[str, str]:
    """The environment under which a process calling `module.function` is killed by `signum`
    (the kernel's OOM killer sends SIGKILL)."""
    return _environment(folder, module, function, "True", f"os.kill(os.getpid(), {int(signum)})")
