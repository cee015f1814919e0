"""What `lint-imports` (nox -s lint, configured in pyproject.toml) cannot see: code that a
module hands to another Python process as text. A layer must not reach a higher one that way
either (bench/core once asked each backend whether it saw a GPU with such a string)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import ROOT

# Lowest first, as in pyproject.toml's layers contract.
LAYERS = ("bench.core", "backends", "bench.recording", "bench.execution", "bench.commands")
IMPORT = re.compile(r"\b(?:from|import)\s+((?:bench|backends)(?:\.\w+)*)")


def _files(layer: str) -> list[Path]:
    return sorted((ROOT / layer.replace(".", "/")).rglob("*.py"))


def _higher(layer: str, module: str) -> bool:
    above = LAYERS[LAYERS.index(layer) + 1 :]
    return any(module == name or module.startswith(f"{name}.") for name in above)


@pytest.mark.parametrize("layer", LAYERS[:-1])
def test_no_layer_imports_a_higher_one_even_in_code_it_runs_elsewhere(layer: str) -> None:
    """Every import a module's text spells out, inside strings included."""
    found = [
        f"{path.relative_to(ROOT)}:{text[: match.start()].count(chr(10)) + 1} {match.group(0)}"
        for path in _files(layer)
        for text in [path.read_text()]
        for match in IMPORT.finditer(text)
        if _higher(layer, match.group(1))
    ]
    assert not found, f"{layer} reaches above itself: " + "; ".join(found)


def test_the_records_import_no_backend_even_in_code_they_run_elsewhere() -> None:
    found = [
        str(path.relative_to(ROOT))
        for path in _files("bench.recording")
        if any(m.group(1).startswith("backends") for m in IMPORT.finditer(path.read_text()))
    ]
    assert not found, f"bench/recording is framework-free, yet these name backends: {found}"
