"""nox sessions: `bench` runs the matrix, `tests` the whole suite, `quick` all but its slow tier,
`lint` ruff and mypy, `docs` the documentation site.

Each session installs everything it needs, so these commands work on a fresh machine.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["tests", "lint"]

ROOT = Path(__file__).parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
CPU_CONSTRAINTS = ROOT / "constraints" / "cpu.txt"
GPU_CONSTRAINTS = ROOT / "constraints" / "gpu.txt"


def _has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


def install_project(session: nox.Session, *extras: str) -> None:
    """The project with its three frameworks (CUDA builds where a GPU is present, else CPU)
    and the given extras (ray, server)."""
    if _has_gpu():
        # A torch on TensorFlow's CUDA major: one CUDA stack and one libcudnn in the process.
        session.install("-c", str(GPU_CONSTRAINTS), "-e", f".[{','.join(['gpu', *extras])}]")
    else:
        # The constraint keeps pip from pulling the multi-GB CUDA build of torch.
        session.install("-c", str(CPU_CONSTRAINTS), "-e", f".[{','.join(['cpu', *extras])}]")


def _wants_ray(args: list[str]) -> bool:
    """`--executor ray` (or `--executor=ray`) among a session's arguments (none: False)."""
    return "--executor=ray" in args or ("--executor", "ray") in itertools.pairwise(args)


@nox.session(reuse_venv=True)
def bench(session: nox.Session) -> None:
    """Run the matrix; with no arguments, the whole tutorial (all stages and backends, seed 0)."""
    # Ray (.[ray]) only where asked for: `nox -s bench -- --executor ray ...`.
    install_project(session, *(["ray"] if _wants_ray(session.posargs) else []))
    session.run("python", "-m", "bench", "run", *session.posargs)


@nox.session(reuse_venv=True, default=False)
def server(session: nox.Session) -> None:
    """A team's MLflow tracking server on PostgreSQL, serving artifacts (bench server):
    `nox -s server -- [--host 0.0.0.0] [--port 5050] [--basic-auth] [--database-uri URI]`."""
    # The project without its frameworks: the server records, it trains nothing.
    session.install("-c", str(CPU_CONSTRAINTS), "-e", ".[server]")
    session.run("python", "-m", "bench", "server", *session.posargs)


def install_tests(session: nox.Session) -> None:
    """What the test suite needs: the project, Ray and the server extra, the test tools."""
    install_project(session, "ray", "server")
    session.install(*nox.project.dependency_groups(PYPROJECT, "test"))


@nox.session(reuse_venv=True)
def tests(session: nox.Session) -> None:
    """The whole test suite, the 30-epoch regression test included; a real Ray and a real
    PostgreSQL-backed server in the executor and server tests."""
    install_tests(session)
    # The slowest tests are printed, so that CI's time (50 minutes at most) can be watched.
    session.run("pytest", "-m", "not microbench", *(session.posargs or ["-q", "--durations=40"]))


@nox.session(reuse_venv=True, default=False)
def quick(session: nox.Session) -> None:
    """The edit-test loop: every test but the slow tier (marker `slow`: 30-epoch training, the
    real Ray cluster, the real PostgreSQL server, the browser, whole-matrix command runs)."""
    install_tests(session)
    marks = "not slow and not microbench"
    session.run("pytest", "-m", marks, *(session.posargs or ["-q", "--durations=10"]))


@nox.session(reuse_venv=True, default=False)
def compare(session: nox.Session) -> None:
    """`nox -s compare -- BASELINE [CANDIDATE]`: the session fails on a regression (bench exits
    1), an inconclusive comparison (3) or bad input (2), and the verdict line says which; the
    candidate defaults to the store's newest invocation."""
    if not session.posargs or session.posargs[0].startswith("-"):
        session.error("give the baseline: nox -s compare -- BASELINE [CANDIDATE] [options]")
    install_project(session)  # as `bench`: the same project in the same kind of venv
    session.run("python", "-m", "bench", "compare", *session.posargs)


@nox.session(reuse_venv=True, default=False)
def perf(session: nox.Session) -> None:
    """Peaks, each stage on each backend (30 epochs), the Keras reference: the perf table."""
    install_project(session)
    session.run("python", "-m", "bench", "perf", *session.posargs)


@nox.session(reuse_venv=True, default=False)
def scale(session: nox.Session) -> None:
    """`nox -s scale -- --tracking-uri http://HOST:PORT --data-dir DIR`: Ray's per-cell
    overhead, one driver's recording rate into the server, a 200-cell sweep (figures)."""
    install_project(session, "ray", "server")
    session.run("python", "-m", "bench.execution.scale", *session.posargs)


@nox.session(reuse_venv=True, default=False)
def microbench(session: nox.Session) -> None:
    """pytest-benchmark: one epoch per backend and stage, saved as JSON under results/."""
    install_project(session)
    session.install(*nox.project.dependency_groups(PYPROJECT, "test"))
    session.run(
        "pytest",
        "-m",
        "microbench",
        "--benchmark-only",
        "--benchmark-storage=file://results/benchmarks",
        "--benchmark-autosave",
        "--benchmark-columns=min,median,max,rounds",
        *session.posargs,
    )


@nox.session(reuse_venv=True, default=False)
def gpu_check(session: nox.Session) -> None:
    """`mlp-bench gpu-check` on this machine's GPU (results/gpu-check/): speed, CUDA graphs,
    bitwise reruns and parity of each backend; `-- --device cpu` rehearses it without one."""
    install_project(session)
    session.run("python", "-m", "bench", "gpu-check", *session.posargs)


@nox.session(reuse_venv=True, default=False)
def docs(session: nox.Session) -> None:
    """The documentation site (docs/, mkdocs.yml) into site/; --strict: a broken link fails.
    The command reference is generated from the parsers, so the project is installed."""
    # The project without its frameworks: building the parsers trains nothing.
    session.install("-c", str(CPU_CONSTRAINTS), "-e", ".")
    session.install(*nox.project.dependency_groups(PYPROJECT, "docs"))
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session(reuse_venv=True)
def lint(session: nox.Session) -> None:
    """ruff (lint and format check), mypy (strict) on bench/ and backends/, and the import
    layers (lint-imports, configured in pyproject.toml)."""
    # mypy needs the typed packages only (torch, numpy); TensorFlow and MLflow are untyped.
    session.install("-c", str(CPU_CONSTRAINTS), "numpy>=2.0", "torch")
    session.install(*nox.project.dependency_groups(PYPROJECT, "lint", "test"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
    session.run("lint-imports")
