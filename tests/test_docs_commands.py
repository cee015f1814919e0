"""The commands that README.md and docs/ tell a user to type, run as typed.

Every line of every ```sh block in README.md and docs/**/*.md is a command. Each one is either
run here, exactly as written, in the checkout, through the real nox and the real noxfile
(`RUN`), or listed in `NOT_RUN` with the reason no test runs it; a documented command in
neither fails `test_every_documented_command_is_accounted_for`, and so does an entry for a
command the docs no longer show. Nothing is added to a command line: the environment sets only
what the docs tell users they can set too, MLP_BENCH_EPOCHS=1 (a quick look at every stage)
and MLFLOW_TRACKING_URI (a store of the test's own, so that a developer's results/ gets no test
runs).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bench.core.data import DATA_DIR_ENV
from bench.core.datasets.mnist import MNIST
from bench.core.spec import EPOCHS_ENV, STAGE_NAMES
from tests.conftest import ROOT, SHARED_MNIST, mnist_dir
from tests.live import as_a_terminal_job

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
NOX_TIMEOUT_S = 1800  # a fresh venv (the frameworks' wheels) and 12 one-epoch cells
UI_PORT = 5000  # `mlp-bench ui` without --port, as the README types it
BACKENDS = 3  # TensorFlow, PyTorch and JAX: what nox -s bench installs


def documented_commands() -> dict[str, list[str]]:
    """Each command of a ```sh block (continuation lines joined, comments dropped) -> the
    files that show it."""
    found: dict[str, list[str]] = {}
    for path in DOCS:
        for block in re.findall(r"^```sh\n(.*?)^```", path.read_text(), re.S | re.M):
            for command in _commands(block):
                found.setdefault(command, []).append(str(path.relative_to(ROOT)))
    return found


def _commands(block: str) -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", block)
    lines = (re.sub(r"\s+#\s.*$", "", line).strip() for line in joined.splitlines())
    return [" ".join(line.split()) for line in lines if line and not line.startswith("#")]


# --- how each command is run, or why it is not ---------------------------------------------


@dataclass(frozen=True)
class Finished:
    """A command run to its end: its exit status and what it printed."""

    code: int
    output: str


def _environment(store: Path) -> dict[str, str]:
    """The caller's environment with the two documented settings; outside this test session's
    venv (a user's shell is in none), nox found on PATH as a user's shell finds it."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env[EPOCHS_ENV] = "1"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{store / 'mlflow.db'}"
    return env


def _typed(command: str, store: Path, path: Path | None = None) -> Finished:
    """Run the command as a user's shell would, in the checkout; `path`: a venv's bin folder
    first on PATH, as activating that venv puts it."""
    env = _environment(store)
    if path is not None:
        env["PATH"] = f"{path}{os.pathsep}{env['PATH']}"
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=NOX_TIMEOUT_S,
    )
    return Finished(done.returncode, done.stdout)


def _needs_mnist_for(command: str) -> None:
    """Skip where the command could not find MNIST: no MLP_BENCH_DATA_DIR with the files
    (CI sets it) and no network to download them is this machine's, not the docs' fault."""
    where = SHARED_MNIST if "MLP_BENCH_DATA_DIR=../shared" in command else mnist_dir()
    if not all((where / f.name).is_file() for f in MNIST.files):
        pytest.skip(f"MNIST not in {where}: set {DATA_DIR_ENV} to run `{command}`")


# The whole matrix's run for each data folder it read, with its store: where the environment
# already sets MLP_BENCH_DATA_DIR to the folder a documented command sets (CI does), `nox -s
# bench` was that command, and twelve cells trained again would show nothing new.
_matrix_runs: dict[Path, tuple[Finished, Path]] = {}


def _data_folder_of(command: str) -> Path | None:
    """The folder `nox -s bench` reads MNIST from, typed as `command`; None: the default."""
    prefix = re.match(rf"^{DATA_DIR_ENV}=(\S+) ", command)
    value = prefix.group(1) if prefix else os.environ.get(DATA_DIR_ENV)
    return (ROOT / value).resolve() if value else None


def _the_whole_matrix(command: str, store: Path) -> None:
    """`nox -s bench`: every stage on every backend, recorded, and the closing table."""
    _needs_mnist_for(command)
    folder = _data_folder_of(command)
    if folder is not None and folder in _matrix_runs:
        done, store = _matrix_runs[folder]
    else:
        done = _typed(command, store)
        if folder is not None:
            _matrix_runs[folder] = (done, store)
    assert done.code == 0, done.output[-4000:]
    assert f"epochs: 1 for every stage, from {EPOCHS_ENV}" in done.output
    cells = _cells_of(_parent(done), store)
    assert sorted(run.data.tags["stage"] for run in cells) == sorted(STAGE_NAMES * BACKENDS)
    assert all(run.info.status == "FINISHED" for run in cells)
    assert {run.data.params["training.epochs"] for run in cells} == {"1"}
    for stage in STAGE_NAMES:  # the closing table: a row per stage and backend
        assert len(re.findall(rf"^\s*{stage}\s", done.output, re.M)) >= BACKENDS, stage


def _parent(done: Finished) -> str:
    """The parent run the command said it recorded."""
    parents = re.findall(r"^recorded as parent run (\w+)$", done.output, re.M)
    assert parents, done.output[-4000:]
    return parents[-1]


def _cells_of(parent: str, store: Path) -> list[Any]:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    search = f"tags.kind = 'cell' and tags.invocation = '{parent}'"
    return list(client.search_runs(experiments, search, max_results=1000))


def _bench_venv(store: Path) -> Path:
    """The venv `nox -s bench` made (the docs have the user run it first), made if missing."""
    bin_dir = ROOT / ".nox" / "bench" / "bin"
    if not (bin_dir / "mlp-bench").exists():
        _the_whole_matrix("nox -s bench", store)
    return bin_dir


def _in_the_venv(command: str, store: Path) -> Finished:
    """A command the docs type in an activated venv: the one nox -s bench made."""
    return _typed(command, store, path=_bench_venv(store))


def _the_listing(command: str, store: Path) -> None:
    done = _in_the_venv(command, store)
    assert done.code == 0, done.output
    assert all(stage in done.output for stage in STAGE_NAMES), done.output


def _a_run_of_five_seeds(command: str, store: Path) -> None:
    """The comparison's two sides: five seeds of one stage on one backend, each recorded."""
    done = _in_the_venv(command, store)
    assert done.code == 0, done.output[-4000:]
    cells = _cells_of(_parent(done), store)
    assert sorted(int(run.data.tags["seed"]) for run in cells) == [0, 1, 2, 3, 4]


def _the_comparison(command: str, store: Path) -> None:
    """compare: a verdict, with its exit status. The two sides differ in nothing, so there is
    no regression; speed may be inconclusive (3) on a machine busy with other work."""
    done = _in_the_venv(command, store)
    assert re.search(r"^verdict: (no regression|inconclusive) \(exit [03]\)$", done.output, re.M), (
        done.output[-4000:]
    )
    assert done.code in (0, 3)


def _on_a_gpu(command: str, store: Path) -> None:
    """A GPU command: run where the machine has an NVIDIA GPU, skipped elsewhere."""
    if shutil.which("nvidia-smi") is None:
        pytest.skip(f"no NVIDIA GPU here to run `{command}`")
    _needs_mnist_for(command)
    done = _typed(command, store)
    assert done.code == 0, done.output[-4000:]


def _the_ui(command: str, store: Path) -> None:
    """`mlp-bench ui`: serves the store at 127.0.0.1:5000 and prints each experiment's cells
    URL; stopped with Ctrl-C (SIGINT), as a user stops it."""
    if not (store / "mlflow.db").exists():
        _the_whole_matrix("nox -s bench", store)  # something to serve, as the docs have it
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", UI_PORT)) == 0:
            pytest.skip(f"port {UI_PORT} is taken on this machine; `{command}` serves there")
    with Serving(command, store) as output:
        page = _get(f"http://127.0.0.1:{UI_PORT}/", timeout_s=120)
        assert "<html" in page.lower()
        assert f"http://127.0.0.1:{UI_PORT}/#/experiments/" in output()


class Serving:
    """A server command started in its own process group, Ctrl-C'd (SIGINT) on exit."""

    def __init__(self, command: str, store: Path) -> None:
        self._command, self._store = command, store
        self._log = store / "server.log"

    def __enter__(self) -> Callable[[], str]:
        with self._log.open("w") as log:
            self._process = subprocess.Popen(
                ["bash", "-c", f"exec {self._command}"],
                cwd=ROOT,
                env=_environment(self._store),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=as_a_terminal_job,  # Ctrl-C works, as in a terminal
            )
        return self._log.read_text

    def __exit__(self, *exc: object) -> None:
        os.killpg(self._process.pid, signal.SIGINT)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()


def _get(url: str, timeout_s: float) -> str:
    """The page at url, retried until the server answers or timeout_s passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


# In the order the docs have a user type them: the venv nox -s bench makes serves the rest.
RUN: dict[str, Callable[[str, Path], None]] = {
    "nox -s bench": _the_whole_matrix,
    "MLP_BENCH_DATA_DIR=../shared/data/mnist nox -s bench": _the_whole_matrix,
    ".nox/bench/bin/mlp-bench ui": _the_ui,
    "mlp-bench list": _the_listing,
    "mlp-bench run --tag release=v1 --stage relu-xavier --backend torch --seeds 5": (
        _a_run_of_five_seeds
    ),
    "mlp-bench run --stage relu-xavier --backend torch --seeds 5": _a_run_of_five_seeds,
    "mlp-bench compare tag:release=v1": _the_comparison,
    "nox -s bench -- --device gpu": _on_a_gpu,
    "nox -s gpu_check": _on_a_gpu,
}

PLACEHOLDER = "a placeholder the user fills in (SERVER-HOST, BASELINE, a password)"
NOT_RUN: dict[str, str] = {
    "pip install nox": "installs into the user's own Python; this test runs under nox already",
    "nox -s tests": "the suite this test is part of; CI runs it (.ci/run) as typed",
    "nox -s quick": "the part of this suite outside the slow tier; CI runs the whole suite",
    "nox -s lint": ".ci/run runs it as typed",
    "nox -s docs": ".ci/run runs it as typed",
    "MLP_BENCH_EPOCHS=1 nox -s bench": (
        "this test's environment sets MLP_BENCH_EPOCHS=1, so it is `nox -s bench`, run here"
    ),
    "python3 -m venv .venv": "would make or change the user's own .venv in the checkout;"
    " nox -s bench makes the same install, in which `mlp-bench list` is run here",
    ". .venv/bin/activate": "as `python3 -m venv .venv`",
    "pip install -c constraints/cpu.txt -e '.[cpu]'": "as `python3 -m venv .venv`",
    "nox -s perf": "30 epochs of every stage on every backend and three Keras references:"
    " longer than CI allows; tests/test_perf.py runs the perf command on one backend",
    "nox -s microbench": "pytest-benchmark timings, many rounds per stage and backend: a"
    " benchmark, not a test",
    "nox -s bench -- --executor ray": "tests/test_ray_executor.py runs the Ray executor on a"
    " real local Ray cluster, and test_the_noxfile_installs_ray_when_asked the session's"
    " choice of the ray extra; a second Ray matrix would cost CI minutes",
    "nox -s server -- --host 0.0.0.0 --port 5050 --database-uri"
    " postgresql://mlp_bench:CHANGE-ME@127.0.0.1:5432/mlp_bench": f"{PLACEHOLDER}; serves on"
    " every interface until stopped; tests/test_mlflow_server.py runs `bench server` on PostgreSQL",
    "nox -s bench -- --tracking-uri http://SERVER-HOST:5050": f"{PLACEHOLDER};"
    " tests/test_mlflow_server.py runs the matrix against a real server",
    "mlp-bench compare BASELINE CANDIDATE --tracking-uri http://SERVER-HOST:5050": f"{PLACEHOLDER};"
    " tests/test_mlflow_server.py compares through a real server",
}


# --- the tests ------------------------------------------------------------------------------


def test_every_documented_command_is_accounted_for() -> None:
    documented = documented_commands()
    unaccounted = {c: f for c, f in documented.items() if c not in RUN and c not in NOT_RUN}
    assert not unaccounted, f"run these in RUN, or say why not in NOT_RUN: {unaccounted}"
    stale = sorted((RUN.keys() | NOT_RUN.keys()) - documented.keys())
    assert not stale, f"no longer documented, drop them: {stale}"
    assert not RUN.keys() & NOT_RUN.keys()


def test_the_readme_shows_the_two_commands() -> None:
    readme = documented_commands()
    for command in ("nox -s bench", "nox -s tests"):
        assert "README.md" in readme.get(command, []), f"README.md lost `{command}`"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("typed-store")


@pytest.mark.slow
@pytest.mark.parametrize("command", list(RUN))
def test_the_documented_command_works_as_typed(command: str, store: Path) -> None:
    if shutil.which("nox") is None:
        pytest.skip("nox is not installed (pip install nox)")
    RUN[command](command, store)


RAY_OR_NOT = [
    ([], False),
    (["--seed", "0"], False),
    (["--executor", "ray"], True),
    (["--executor=ray"], True),
    (["--executor", "local", "ray"], False),
]


@pytest.mark.parametrize(("arguments", "wanted"), RAY_OR_NOT)
def test_the_noxfile_installs_ray_when_asked(arguments: list[str], wanted: bool) -> None:
    """No arguments at all is the README's `nox -s bench`, which once raised in here."""
    spec = importlib.util.spec_from_file_location("noxfile", ROOT / "noxfile.py")
    assert spec is not None and spec.loader is not None
    noxfile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(noxfile)
    assert noxfile._wants_ray(arguments) is wanted
