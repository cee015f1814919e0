"""Backend registry: name -> "module:Class", imported lazily so one framework suffices."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from backends.base import Backend
from bench.core.errors import BenchError


@dataclass(frozen=True)
class Registered:
    """One backend: where it lives, the framework package it needs, the options only it has
    (bench.core.options.Options fields; other backends' cells record them "n/a"), and how to
    install it where the nox sessions do not."""

    implementation: str  # "module:Class", imported only when the backend is used
    package: str
    options: tuple[str, ...] = ()
    install: str = "nox -s bench does"


# A new backend is its module and one line here.
BACKENDS: dict[str, Registered] = {
    "tensorflow": Registered("backends.tensorflow:TensorFlowBackend", "tensorflow", ("no_xla",)),
    "torch": Registered("backends.torch:TorchBackend", "torch", ("cuda_graphs", "torch_matmul")),
    "jax": Registered("backends.jax:JaxBackend", "jax"),
}


def framework_options() -> dict[str, tuple[str, ...]]:
    """Each framework-only option and the backends that have it."""
    owners: dict[str, tuple[str, ...]] = {}
    for name, entry in BACKENDS.items():
        for option in entry.options:
            owners[option] = (*owners.get(option, ()), name)
    return owners


def is_installed(name: str) -> bool:
    """Whether the framework behind a backend can be imported (checked without importing it)."""
    return importlib.util.find_spec(BACKENDS[name].package) is not None


def installed_backends() -> list[str]:
    return [name for name in BACKENDS if is_installed(name)]


def check_backend(name: str) -> None:
    """Raise a one-line BenchError for an unknown or uninstalled backend."""
    if name not in BACKENDS:
        raise BenchError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    if not is_installed(name):
        entry = BACKENDS[name]
        raise BenchError(
            f"backend {name!r} needs the {entry.package!r} package, which is not installed;"
            f" install it ({entry.install}) or leave out --backend {name}"
        )


def load_backend(name: str) -> type[Backend]:
    """Import and return the backend class (this imports its framework)."""
    check_backend(name)
    module_name, class_name = BACKENDS[name].implementation.split(":")
    cls: type[Backend] = getattr(importlib.import_module(module_name), class_name)
    return cls
