"""The registry drives everything: a backend is its module and one registry line, and the
tests reach every registered backend without naming one."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from backends import BACKENDS, load_backend
from backends.base import Backend
from bench.core.options import framework_options
from tests.conftest import ROOT, backend_params

# Test modules about one framework's own paths, named for it (test_<backend>_...py), and the
# install pins, which are about the wheels themselves.
FRAMEWORK_MODULES = ("test_install.py",)


def _own_module(path: Path) -> bool:
    return path.name in FRAMEWORK_MODULES or any(
        path.name.startswith(f"test_{name}_") for name in BACKENDS
    )


def _parametrized_backend_names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, name) of every registered backend's name written as a value of a
    pytest.mark.parametrize list: a parametrisation that would miss the next backend."""
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "parametrize"):
            continue
        for argument in node.args[1:]:
            for value in ast.walk(argument):
                if isinstance(value, ast.Constant) and value.value in BACKENDS:
                    found.append((value.lineno, str(value.value)))
    return found


def test_no_test_parametrises_over_named_backends() -> None:
    offenders = [
        f"{path.name}:{line} names {name!r}"
        for path in sorted((ROOT / "tests").glob("test_*.py"))
        if not _own_module(path)
        for line, name in _parametrized_backend_names(ast.parse(path.read_text()))
    ]
    assert not offenders, "parametrise over backend_params() instead: " + "; ".join(offenders)


def test_the_shared_parametrisation_is_the_registry() -> None:
    assert [p.values[0] for p in backend_params()] == list(BACKENDS)  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", backend_params())
def test_a_registered_backend_implements_the_interface_under_its_name(name: str) -> None:
    cls = load_backend(name)
    assert issubclass(cls, Backend) and cls.name == name
    assert not inspect.isabstract(cls), f"{cls.__name__} leaves abstract methods"
    interface = inspect.signature(Backend.__init__)
    assert inspect.signature(cls.__init__).parameters.keys() == interface.parameters.keys()


def test_every_framework_an_option_names_is_a_registered_backend() -> None:
    """An option's field names its backends by hand: a misspelt one would record the option
    "n/a" in every cell of the backend that has it."""
    unknown = {
        option: sorted(set(owners) - set(BACKENDS))
        for option, owners in framework_options().items()
        if set(owners) - set(BACKENDS)
    }
    assert not unknown, f"options name backends that are not registered: {unknown}"


def test_a_registered_backend_that_is_missing_names_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new backend's line alone makes it known; without its framework it is one line that
    says how to install it, and the commands' defaults leave it out."""
    from backends import Registered, check_backend, installed_backends
    from bench.core.errors import BenchError

    line = Registered("backends.mxnet:MxnetBackend", "mxnet_not_installed", install="pip install x")
    monkeypatch.setitem(BACKENDS, "mxnet", line)
    assert "mxnet" in [p.values[0] for p in backend_params()]  # type: ignore[attr-defined]
    assert "mxnet" not in installed_backends()
    with pytest.raises(BenchError, match=r"'mxnet_not_installed' package.*\(pip install x\)"):
        check_backend("mxnet")
