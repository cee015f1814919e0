"""How an invocation ends early: a closed terminal, an impatient Ctrl-C, `kill -9`, a hung
worker. Real processes, real signals, a real store; no run may be left RUNNING."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.faults import hang, killed
from tests.live import (
    PATIENCE_S,
    bench_command,
    finish,
    leftovers,
    start_run,
    statuses,
    store_runs,
    tiny_run,
    wait_until,
    worker_started,
)

# The slow tier: real runs signalled and killed.
pytestmark = pytest.mark.slow


def test_hangup_ends_runs_killed_and_removes_temp_folders(tmp_path: Path) -> None:
    """A closed terminal or SSH session: the pipes to it break, then SIGHUP reaches the job."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    process = start_run(tmp_path, uri)
    wait_until(worker_started(tmp_path), process, "a running worker")
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()
    process.stderr.close()
    os.killpg(process.pid, signal.SIGHUP)
    assert process.wait(timeout=PATIENCE_S) == 130
    assert statuses(uri) == {"matrix": "KILLED", "cell": "KILLED"}
    assert leftovers(tmp_path) == []


def test_ctrl_c_again_during_clean_up_is_absorbed(tmp_path: Path) -> None:
    """Ctrl-C, then Ctrl-C again every 20 ms while it cleans up: clean-up still finishes."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    process = start_run(tmp_path, uri)
    wait_until(worker_started(tmp_path), process, "a running worker")
    deadline = time.monotonic() + PATIENCE_S
    while process.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError):  # the job has just ended
            os.killpg(process.pid, signal.SIGINT)
        time.sleep(0.02)
    code, out, err = finish(process)
    assert code == 130, err
    assert "Traceback" not in err and "interrupted" in out
    assert statuses(uri) == {"matrix": "KILLED", "cell": "KILLED"}
    assert leftovers(tmp_path) == []


def _open_store(uri: str) -> subprocess.CompletedProcess[str]:
    """The lightest invocation that opens the store: reproducing a run that does not exist."""
    return subprocess.run(
        bench_command("reproduce", "0" * 32, "--tracking-uri", uri),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=PATIENCE_S,
    )


def test_runs_of_a_killed_process_are_ended_by_the_next_invocation(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    process = start_run(tmp_path, uri)
    wait_until(worker_started(tmp_path), process, "a running worker")
    alive = _open_store(uri)  # while its owner runs, a run is left alone
    assert alive.returncode == 2 and "KILLED" not in alive.stdout, alive.stdout
    assert set(statuses(uri).values()) == {"RUNNING"}
    process.kill()  # kill -9 of the main process: none of its clean-up runs
    finish(process)
    assert set(statuses(uri).values()) == {"RUNNING"}
    after = _open_store(uri)
    assert after.returncode == 2 and "no run" in after.stderr
    [line] = [line for line in after.stdout.splitlines() if "KILLED" in line]
    assert f"2 run(s) in {uri} left RUNNING by a process that is gone (pid {process.pid})" in line
    assert statuses(uri) == {"matrix": "KILLED", "cell": "KILLED"}
    assert [r.data.tags["owner_pid"] for r in store_runs(uri)] == [str(process.pid)] * 2


def _one_cell(uri: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    command = tiny_run(uri, *args)
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=PATIENCE_S, env=env
    )


def test_hung_worker_is_ended_at_the_cell_timeout(tmp_path: Path) -> None:
    env = hang(tmp_path / "fault", "bench.execution.runner", "run_cell")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = _one_cell(uri, env, "--cell-timeout", "5")
    assert done.returncode == 1, done.stderr
    assert "FAILED: exceeded --cell-timeout 5 s; the worker was killed" in done.stdout
    assert statuses(uri) == {"matrix": "FAILED", "cell": "FAILED"}
    [cell] = [r for r in store_runs(uri) if r.data.tags["kind"] == "cell"]
    assert cell.data.tags["error"] == "exceeded --cell-timeout 5 s; the worker was killed"


def test_worker_killed_by_a_signal_names_it(tmp_path: Path) -> None:
    env = killed(tmp_path / "fault", "bench.execution.runner", "run_cell", signal.SIGKILL)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = _one_cell(uri, env)
    assert done.returncode == 1, done.stderr
    assert "FAILED: worker killed by signal 9 (SIGKILL)" in done.stdout
    assert statuses(uri) == {"matrix": "FAILED", "cell": "FAILED"}
