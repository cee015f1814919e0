"""What nox installs: each extra with its constraints file, and a GPU pin on one CUDA stack.

No network: the CUDA requirements of the wheels are those recorded in constraints/gpu.txt
(`wheel-deps` lines, read from the wheels' metadata), checked against the pins and pyproject.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import tomllib
import types
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import ROOT

CONSTRAINTS = ROOT / "constraints"
GPU_TXT = CONSTRAINTS / "gpu.txt"
# The wheels that bring CUDA libraries: PyTorch, TensorFlow, and JAX's CUDA plugin.
FRAMEWORKS = ("torch", "tensorflow", "jax-cuda12-plugin")
# nvidia-cudnn-cu12, nvidia-nccl-cu13: the CUDA major a library wheel is built for.
CUDA_SUFFIX = re.compile(r"^nvidia-.+-cu(\d+)$")


def _pins(path: Path) -> dict[str, Requirement]:
    """The constraints of a file by name (comments and blank lines skipped)."""
    pins: dict[str, Requirement] = {}
    for line in path.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if text:
            req = Requirement(text)
            name = canonicalize_name(req.name)
            assert name not in pins, f"{path.name}: {name} constrained twice"
            pins[name] = req
    return pins


def _pinned(path: Path) -> dict[str, Version]:
    """The exact version of each package a constraints file pins."""
    versions = {}
    for name, req in _pins(path).items():
        (spec,) = req.specifier  # one specifier: ==
        versions[name] = Version(spec.version)
    return versions


def _notes(key: str) -> list[str]:
    """The values of `# KEY: VALUE` lines in gpu.txt (KEY may hold spaces)."""
    prefix = f"# {key}:"
    return [
        line[len(prefix) :].strip()
        for line in GPU_TXT.read_text().splitlines()
        if line.startswith(prefix)
    ]


def _cuda_major() -> int:
    (value,) = _notes("cuda-major")
    return int(value)


def _wheel_deps() -> dict[tuple[str, Version], dict[str, SpecifierSet]]:
    """`# wheel-deps NAME==VERSION: REQ REQ ...`: each recorded wheel's CUDA requirements."""
    records: dict[tuple[str, Version], dict[str, SpecifierSet]] = {}
    pattern = re.compile(r"^# wheel-deps (\S+?)==(\S+): (.+)$")
    for line in GPU_TXT.read_text().splitlines():
        if match := pattern.match(line):
            key = (canonicalize_name(match[1]), Version(match[2]))
            assert key not in records, f"gpu.txt records {key} twice"
            reqs = [Requirement(text) for text in match[3].split()]
            records[key] = {canonicalize_name(r.name): r.specifier for r in reqs}
    return records


def _record(name: str, version: Version) -> dict[str, SpecifierSet]:
    records = _wheel_deps()
    assert (name, version) in records, (
        f"gpu.txt has no `# wheel-deps {name}=={version}:` line; record the CUDA requirements "
        "of its Linux x86_64 wheel (its metadata) before pinning it"
    )
    return records[(name, version)]


def _majors(deps: dict[str, SpecifierSet]) -> set[int]:
    return {int(m[1]) for name in deps if (m := CUDA_SUFFIX.match(name))}


@pytest.mark.parametrize("extra", ["cpu", "gpu"])
def test_a_constraints_file_pins_exact_versions_pip_accepts(extra: str) -> None:
    pins = _pins(CONSTRAINTS / f"{extra}.txt")
    assert "torch" in pins
    for name, req in pins.items():
        # pip refuses extras in a constraints file; a marker would leave the pin off somewhere.
        assert not req.extras and req.marker is None and req.url is None, name
        assert [s.operator for s in req.specifier] == ["=="], f"{name}: pin with == only"
        assert "*" not in str(req.specifier), f"{name}: an exact version, not a prefix"


class _Session:
    """The part of nox.Session that install_project uses: the install calls, recorded."""

    def __init__(self) -> None:
        self.installs: list[tuple[str, ...]] = []

    def install(self, *args: str, **kwargs: Any) -> None:
        self.installs.append(args)


def _load_noxfile(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """noxfile.py imported with a stand-in for nox (not installed in the sessions' venvs)."""
    nox = types.SimpleNamespace(
        options=types.SimpleNamespace(),
        project=types.SimpleNamespace(
            load_toml=lambda path: tomllib.loads(Path(path).read_text()),
            dependency_groups=lambda *args: (),
        ),
        session=lambda *args, **kwargs: lambda function: function,
        Session=_Session,
    )
    monkeypatch.setitem(sys.modules, "nox", nox)
    spec = importlib.util.spec_from_file_location("noxfile_under_test", ROOT / "noxfile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("extra", ["cpu", "gpu"])
def test_nox_installs_each_extra_with_its_constraints_file(
    extra: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    noxfile = _load_noxfile(monkeypatch)
    monkeypatch.setattr(noxfile, "_has_gpu", lambda: extra == "gpu")
    session = _Session()
    noxfile.install_project(session)
    (args,) = [args for args in session.installs if any(f".[{extra}]" in a for a in args)]
    constraints = [Path(args[i + 1]).resolve() for i, a in enumerate(args) if a == "-c"]
    assert constraints == [CONSTRAINTS / f"{extra}.txt"]
    other = "cpu" if extra == "gpu" else "gpu"
    assert not any(f".[{other}]" in a for call in session.installs for a in call)


def test_the_gpu_frameworks_are_pinned_to_wheels_of_one_cuda_major() -> None:
    major = _cuda_major()
    pins = _pinned(GPU_TXT)
    for name in FRAMEWORKS:
        deps = _record(name, pins[name])
        assert _majors(deps) == {major}, f"{name}=={pins[name]}: CUDA {_majors(deps)}"
    for name, version in pins.items():
        if m := CUDA_SUFFIX.match(name):
            assert int(m[1]) == major, f"{name}: not a CUDA {major} wheel"
        if name.startswith("nvidia-cuda-"):  # the toolkit's own parts carry its version
            assert version.major == major, f"{name}=={version}: not CUDA {major}"


def test_the_pinned_frameworks_and_pins_agree_on_every_shared_library() -> None:
    """One version of each CUDA library satisfies both frameworks' wheels and gpu.txt: one
    libcudnn (and one NCCL, cuBLAS, ...) in the process, and pip can resolve the pins."""
    pins = _pinned(GPU_TXT)
    wheels = [_record(name, pins[name]) for name in FRAMEWORKS]
    for library in sorted(set().union(*wheels)):
        ranges = [deps[library] for deps in wheels if library in deps]
        exact = {Version(s.version) for r in ranges for s in r if s.operator == "=="}
        if library in pins:
            exact.add(pins[library])
        if exact:  # the wheels pin one version: it (or gpu.txt's) must fit every range
            assert len(exact) == 1, f"{library}: pinned to {sorted(map(str, exact))}"
            (version,) = exact
            bad = [str(r) for r in ranges if version not in r]
            assert not bad, f"{library}=={version} is outside {bad}"


def test_the_gpu_pins_satisfy_the_gpu_extra() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extra = [Requirement(r) for r in pyproject["project"]["optional-dependencies"]["gpu"]]
    required = {canonicalize_name(r.name): r for r in extra}
    # TensorFlow's CUDA libraries are the and-cuda extra, JAX's the cuda12 one: the CUDA 12
    # wheels the pins match.
    assert "and-cuda" in required["tensorflow"].extras
    assert f"cuda{_cuda_major()}" in required["jax"].extras
    pins = _pinned(GPU_TXT)
    for name in ("torch", "tensorflow", "jax"):
        assert name in required and name in pins
        assert pins[name] in required[name].specifier, f"{name}=={pins[name]} vs the extra"
    assert pins["jaxlib"] == pins["jax"] == pins["jax-cuda12-plugin"]


def test_gpu_machines_run_the_cpu_torch_when_its_wheel_shares_tensorflows_cuda_major() -> None:
    """torch on GPU machines differs from the CPU pin only while the CPU pin's CUDA wheel is on
    another CUDA major; its record in gpu.txt says which."""
    cpu = _pinned(CONSTRAINTS / "cpu.txt")["torch"]
    gpu = _pinned(GPU_TXT)["torch"]
    cpu_majors = _majors(_record("torch", Version(cpu.base_version)))
    if cpu_majors == {_cuda_major()}:
        assert gpu == Version(cpu.base_version)
    else:
        assert gpu < Version(cpu.base_version), "the GPU torch is the newest on TF's CUDA major"


def test_every_session_pins_one_mlflow_inside_the_projects_range() -> None:
    """Every session, the server's included, reads and writes the same store, and MLflow
    refuses a store whose schema a newer release wrote: both constraints files pin one MLflow,
    and it is one the project accepts."""
    cpu, gpu = (_pinned(CONSTRAINTS / f"{extra}.txt") for extra in ("cpu", "gpu"))
    assert cpu["mlflow"] == gpu["mlflow"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [required] = [
        r for r in map(Requirement, pyproject["project"]["dependencies"]) if r.name == "mlflow"
    ]
    assert cpu["mlflow"] in required.specifier
