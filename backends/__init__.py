"""Backend registry: name -> "module:Class", imported lazily so one framework suffices."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import subprocess
import sys
from dataclasses import dataclass

from backends.base import Backend
from bench.core.errors import BenchError

PROBE_TIMEOUT_S = 180.0  # importing TensorFlow with its CUDA libraries can take a minute


@dataclass(frozen=True)
class Registered:
    """One backend: where it lives, the framework package it needs, and how to install it where
    the nox sessions do not. An option only some backends have says which on its own field
    (bench.core.options.Options), not here."""

    implementation: str  # "module:Class", imported only when the backend is used
    package: str
    install: str = "nox -s bench does"


# A new backend is its module and one line here.
BACKENDS: dict[str, Registered] = {
    "tensorflow": Registered("backends.tensorflow:TensorFlowBackend", "tensorflow"),
    "torch": Registered("backends.torch:TorchBackend", "torch"),
    "jax": Registered("backends.jax:JaxBackend", "jax"),
}


def is_installed(name: str) -> bool:
    """Whether the framework behind a backend can be imported (checked without importing it)."""
    return importlib.util.find_spec(BACKENDS[name].package) is not None


def installed_backends() -> list[str]:
    return [name for name in BACKENDS if is_installed(name)]


def check_known(name: str) -> None:
    """Raise a one-line BenchError for a backend name that is not registered."""
    if name not in BACKENDS:
        raise BenchError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")


def check_backend(name: str) -> None:
    """Raise a one-line BenchError for an unknown or uninstalled backend."""
    check_known(name)
    if not is_installed(name):
        entry = BACKENDS[name]
        raise BenchError(
            f"backend {name!r} needs the {entry.package!r} package, which is not installed;"
            f" install it ({entry.install}) or leave out --backend {name}"
        )


@functools.cache
def sees_gpu(name: str) -> bool:
    """Whether the backend's framework, imported in a fresh process, sees a CUDA GPU: asked in
    a subprocess, as importing a framework here would pin its thread pools and GPU memory for
    good (bench.core.devices says only whether one is attached)."""
    code = f"from backends import load_backend; print(load_backend({name!r}).visible_gpus())"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return False
    lines = done.stdout.split()
    return done.returncode == 0 and bool(lines) and lines[-1].isdigit() and int(lines[-1]) > 0


def load_backend(name: str) -> type[Backend]:
    """Import and return the backend class (this imports its framework)."""
    check_backend(name)
    module_name, class_name = BACKENDS[name].implementation.split(":")
    cls: type[Backend] = getattr(importlib.import_module(module_name), class_name)
    return cls
