"""Backend registry: name -> "module:Class", imported lazily so one framework suffices."""

from __future__ import annotations

import importlib
import importlib.util

from backends.base import Backend
from bench.core.errors import BenchError

# name -> (implementation "module:Class", the framework package it needs)
BACKENDS: dict[str, tuple[str, str]] = {
    "tensorflow": ("backends.tensorflow:TensorFlowBackend", "tensorflow"),
    "torch": ("backends.torch:TorchBackend", "torch"),
    "jax": ("backends.jax:JaxBackend", "jax"),
}

# How a backend that the nox sessions do not install yet is installed.
INSTALLED_BY: dict[str, str] = {"jax": "pip install -e .[cpu,jax]"}

# RunOptions fields that only one framework has; other backends' cells record them as "n/a".
FRAMEWORK_ONLY_OPTIONS: dict[str, str] = {
    "xla": "tensorflow",
    "cuda_graphs": "torch",
    "torch_matmul": "torch",
}


def is_installed(name: str) -> bool:
    """Whether the framework behind a backend can be imported (checked without importing it)."""
    return importlib.util.find_spec(BACKENDS[name][1]) is not None


def installed_backends() -> list[str]:
    return [name for name in BACKENDS if is_installed(name)]


def check_backend(name: str) -> None:
    """Raise a one-line BenchError for an unknown or uninstalled backend."""
    if name not in BACKENDS:
        raise BenchError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    if not is_installed(name):
        package = BACKENDS[name][1]
        raise BenchError(
            f"backend {name!r} needs the {package!r} package, which is not installed;"
            f" install it ({INSTALLED_BY.get(name, 'nox -s bench does')}) or leave out"
            f" --backend {name}"
        )


def load_backend(name: str) -> type[Backend]:
    """Import and return the backend class (this imports its framework)."""
    check_backend(name)
    module_name, class_name = BACKENDS[name][0].split(":")
    cls: type[Backend] = getattr(importlib.import_module(module_name), class_name)
    return cls
