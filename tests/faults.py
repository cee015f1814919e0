"""Faults injected into real worker processes, for the paths that only a GPU failure takes.

A `sitecustomize.py` on PYTHONPATH runs at the start of every Python process that inherits the
environment: the command under test and each worker it spawns. It wraps one function of the
harness so that it raises what a failing GPU raises; everything else runs for real.
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
import {module} as _target

_original = _target.{function}


def _faulty(*args, **kwargs):
    if {condition}:
        raise RuntimeError({message!r})
    return _original(*args, **kwargs)


_target.{function} = _faulty
"""


def inject(
    folder: Path, module: str, function: str, condition: str = "True", message: str = CUDA_ERROR
) -> dict[str, str]:
    """The environment under which `module.function` raises RuntimeError(message) whenever
    `condition` (a Python expression over `args` and `kwargs`) holds."""
    folder.mkdir(parents=True, exist_ok=True)
    code = _WRAP.format(module=module, function=function, condition=condition, message=message)
    (folder / "sitecustomize.py").write_text(code)
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}
