"""A real `python -m bench run` in its own process group, as a terminal starts it: watched
through what it leaves on disk and in its store, and signalled.

Every wait is for an event (a line, a file, a run), never for a length of time, and allows
minutes: a busy 2-core machine takes that long where an idle one takes seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from backends import installed_backends
from tests.conftest import ROOT, mnist_dir

PATIENCE_S = 600.0


def bench_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bench", *args]


def bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m bench ARGS` run to its end, its output captured."""
    return subprocess.run(
        bench_command(*args),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
        env={**os.environ, **(env or {})},
    )


def run_command(uri: str, *args: str) -> list[str]:
    """`bench run` of one relu-xavier cell on one backend, no peak measurement, real MNIST."""
    return bench_command(
        "run",
        "--stage",
        "relu-xavier",
        "--backend",
        installed_backends()[-1],
        "--no-peak",
        "--data-dir",
        str(mnist_dir()),
        "--tracking-uri",
        uri,
        *args,
    )


def two_epoch_run(uri: str, *args: str) -> list[str]:
    """`bench run` of relu-xavier, 2 epochs (the least with a samples/s), no peak measurement,
    on every installed backend, real MNIST."""
    return bench_command(
        *("run", "--stage", "relu-xavier", "--epochs", "2", "--no-peak"),
        *("--data-dir", str(mnist_dir()), "--tracking-uri", uri, *args),
    )


def tiny_run(uri: str, *args: str) -> list[str]:
    """One cell of one epoch, no peak measurement: the least a `bench run` can train."""
    return run_command(uri, "--epochs", "1", *args)


def start_run(
    tmp_path: Path, uri: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """`bench run` of one relu-xavier cell (30 epochs: still training when it is signalled),
    its temporary folders under tmp_path/tmp, in a new session like a terminal's job."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    command = run_command(uri, *args)
    return subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "TMPDIR": str(tmp_path / "tmp"), **(env or {})},
        preexec_fn=as_a_terminal_job,
    )


def as_a_terminal_job() -> None:
    """The signal dispositions of a job started from a terminal. Ignored dispositions are
    inherited: under `nohup` (SIGHUP) or as a shell's background job (SIGINT) the tests' own
    process passes them on, and bench, rightly, keeps what it was started with."""
    for signum in (signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)


def wait_until(condition: Callable[[], bool], process: subprocess.Popen[str], what: str) -> None:
    """Poll until `condition` holds; fail with the process's stderr if it exits first."""
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        if process.poll() is not None:
            _, err = process.communicate()
            raise AssertionError(f"bench exited ({process.returncode}) before {what}: {err}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"no {what} within {PATIENCE_S:.0f} s")
        time.sleep(0.2)


def worker_started(tmp_path: Path) -> Callable[[], bool]:
    """True once a cell's worker runs: its log exists in the cell's temporary folder."""
    return lambda: any((tmp_path / "tmp").glob("mlp-bench-*/worker.log"))


def leftovers(tmp_path: Path) -> list[str]:
    return sorted(path.name for path in (tmp_path / "tmp").iterdir())


def finish(process: subprocess.Popen[str]) -> tuple[int, str, str]:
    try:
        out, err = process.communicate(timeout=PATIENCE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return process.returncode, out, err


def store_runs(uri: str) -> list[Any]:
    """Every run in the store, of every experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    return list(client.search_runs([e.experiment_id for e in client.search_experiments()]))


def statuses(uri: str) -> dict[str, str]:
    """kind (matrix, cell: one seed has no group run) -> status, for a store of one invocation
    of one cell."""
    return {run.data.tags["kind"]: run.info.status for run in store_runs(uri)}


@contextlib.contextmanager
def competing_processes(count: int) -> Iterator[list[subprocess.Popen[str]]]:
    """`count` Python processes spinning on the CPU (on a 2-core machine two leave nothing
    free), each started when it says so; killed on the way out whatever happens."""
    spinners: list[subprocess.Popen[str]] = []
    try:
        for _ in range(count):
            spinner = subprocess.Popen(
                [sys.executable, "-c", "print('spinning', flush=True)\nwhile True: pass"],
                stdout=subprocess.PIPE,
                text=True,
            )
            spinners.append(spinner)
            assert spinner.stdout is not None and spinner.stdout.readline() == "spinning\n"
        yield spinners
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
