"""The tracking store as it fails in use: locked by another process, read-only, a folder, a
deleted experiment, an artifact folder that cannot be written, two invocations at once; and
what MLflow itself tries to reach. Real processes, real SQLite files."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.faults import barrier
from tests.live import (
    PATIENCE_S,
    bench_command,
    finish,
    start_run,
    statuses,
    store_runs,
    tiny_run,
    wait_until,
    worker_started,
)


def run(command: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=PATIENCE_S, env=env
    )


@pytest.mark.slow
def test_store_locked_past_the_wait_keeps_the_cell_for_record_pending(tmp_path: Path) -> None:
    """Another process holds the store's lock from mid-cell until the invocation gives up."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    process = start_run(tmp_path, uri, "--epochs", "1", env={"MLP_BENCH_STORE_RETRY_S": "1"})
    wait_until(worker_started(tmp_path), process, "a running worker")
    holder = sqlite3.connect(tmp_path / "mlflow.db", timeout=PATIENCE_S, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")  # no other process can read or write the store
        code, out, err = finish(process)
    finally:
        holder.close()
    assert code == 1, out + err
    [line] = err.splitlines()
    assert line.startswith("error: ") and "database is locked" in line, line
    kept = tmp_path / "unrecorded"
    assert f"record it with `mlp-bench record-pending {kept}`" in line
    [pending] = kept.glob("*/pending.json")
    assert json.loads(pending.read_text())["result"]["test_accuracy"] > 0.5

    copy = tmp_path / "copy"
    shutil.copytree(kept, copy)
    done = run(bench_command("record-pending", str(kept)))
    assert done.returncode == 0, done.stderr
    assert "left RUNNING by a process that is gone" in done.stdout  # the parent
    assert f"into run {pending.parent.name}" in done.stdout
    # Its only cell recorded, the invocation ends as it would have: FINISHED, with its report.
    assert "all 1 cells recorded, FINISHED" in done.stdout
    assert statuses(uri) == {"matrix": "FINISHED", "cell": "FINISHED"}
    [parent] = [r for r in store_runs(uri) if r.data.tags["kind"] == "matrix"]
    assert list((tmp_path / "reports" / parent.info.run_id).glob("report.html"))
    again = run(bench_command("record-pending", str(copy)))  # a copy of the same cell
    assert again.returncode == 0 and "is recorded already; skipped" in again.stdout
    [cell] = [r for r in store_runs(uri) if r.data.tags["kind"] == "cell"]
    assert cell.data.metrics["test_accuracy"] > 0.5 and cell.data.tags["outcome"] == "converged"
    assert cell.data.metrics["val_accuracy"] > 0.5  # the epoch the lock kept from the store
    assert cell.data.tags["speed_stable"] in ("true", "false")  # the verdict kept with it
    assert cell.data.metrics["canary_before_samples_per_s"] > 0
    assert not list(kept.iterdir())
    from mlflow.tracking import MlflowClient

    history = MlflowClient(uri).get_metric_history(cell.info.run_id, "test_accuracy")
    assert len(history) == 1  # recorded once, not once per copy


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` made read-only for this user; root ignores permission bits, so for root the
    immutable attribute (ext4, xfs, btrfs; needs CAP_LINUX_IMMUTABLE)."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root without chattr: cannot make a file read-only")
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot make {path} immutable here: {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def _existing_store(folder: Path, experiment: str = "mnist-tutorial") -> str:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{folder}/mlflow.db"
    MlflowClient(tracking_uri=uri).create_experiment(
        experiment, artifact_location=(folder / "artifacts").as_uri()
    )
    return uri


def _assert_one_line_before_training(done: subprocess.CompletedProcess[str], words: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("error: ") and words in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


@pytest.mark.parametrize("what", ["file", "folder"])
def test_read_only_store_is_one_line_before_training(tmp_path: Path, what: str) -> None:
    uri = _existing_store(tmp_path)
    target = tmp_path / "mlflow.db" if what == "file" else tmp_path
    with read_only(target):
        done = run(tiny_run(uri))
    words = (
        "attempt to write a readonly database" if what == "file" else "unable to open database file"
    )
    _assert_one_line_before_training(done, f"tracking store {uri} cannot be written ({words})")
    assert store_runs(uri) == []


def test_store_that_is_a_folder_is_one_line_before_training(tmp_path: Path) -> None:
    done = run(tiny_run(f"sqlite:///{tmp_path}"))
    _assert_one_line_before_training(done, "is a folder, not a database file")


def test_store_in_a_read_only_folder_is_one_line_before_training(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    uri = f"sqlite:///{folder}/mlflow.db"
    with read_only(folder):
        done = run(tiny_run(uri))
    _assert_one_line_before_training(done, "cannot be written (unable to open database file)")


@pytest.mark.slow
def test_deleted_experiment_says_how_to_restore_it(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = _existing_store(tmp_path, "old")
    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name("old").experiment_id
    client.delete_experiment(experiment_id)
    done = run(tiny_run(uri, "--experiment", "old"))
    _assert_one_line_before_training(
        done, f"mlflow experiments restore --experiment-id {experiment_id}`"
    )
    assert store_runs(uri) == []


@pytest.mark.slow
def test_artifact_folder_that_cannot_be_written_is_one_line_before_training(
    tmp_path: Path,
) -> None:
    """A file where the artifact folder should be: any user, root included, fails on it."""
    (tmp_path / "artifacts").write_text("not a folder")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = run(tiny_run(uri))
    _assert_one_line_before_training(done, f"artifact folder {tmp_path / 'artifacts'}")
    assert store_runs(uri) == []


@pytest.mark.slow
def test_two_invocations_starting_together_on_a_new_store_both_succeed(tmp_path: Path) -> None:
    # Both processes wait for each other at the store's opening, then open it at once.
    env = barrier(tmp_path / "meet", "bench.recording.tracking", "Tracker.__init__", parties=2)
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    processes = [
        subprocess.Popen(
            tiny_run(uri),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    results = [finish(process) for process in processes]
    assert [code for code, _, _ in results] == [0, 0], [err for _, _, err in results]
    parents = [r for r in store_runs(uri) if r.data.tags["kind"] == "matrix"]
    assert [r.info.status for r in parents] == ["FINISHED", "FINISHED"]


# Written into every process the command starts: what MLflow's telemetry could do there.
_WATCH = """
import atexit, json, os, sys

_hosts = []


def _audit(event, args):
    if event == "socket.getaddrinfo":
        _hosts.append(str(args[0]))


def _report(when):
    client = sys.modules.get("mlflow.telemetry.client")
    with open({log!r}, "a") as log:
        log.write(json.dumps({{
            "when": when,
            "argv": sys.argv,
            "disabled": os.environ.get("MLFLOW_DISABLE_TELEMETRY"),
            "client": repr(client.get_telemetry_client()) if client else None,
            "hosts": _hosts,
        }}) + "\\n")


sys.addaudithook(_audit)
_report("start")
atexit.register(_report, "exit")  # workers end with os._exit: only the command reports this
"""
# A user's shell, without what makes MLflow skip telemetry by itself (a CI, pytest).
_SHELL = ("PATH", "HOME", "LANG", "MLP_BENCH_CACHE_DIR")


@pytest.mark.slow
def test_mlflow_telemetry_is_off_in_every_process(tmp_path: Path) -> None:
    log = tmp_path / "processes.jsonl"
    (tmp_path / "watch").mkdir()
    (tmp_path / "watch" / "sitecustomize.py").write_text(_WATCH.format(log=str(log)))
    env = {k: os.environ[k] for k in _SHELL if k in os.environ}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(tmp_path / "watch"), os.environ.get("PYTHONPATH")) if p
    )
    done = run(tiny_run(f"sqlite:///{tmp_path}/mlflow.db"), env=env)
    assert done.returncode == 0, done.stderr
    reports = [json.loads(line) for line in log.read_text().splitlines()]
    [command] = [r for r in reports if r["when"] == "exit"]
    assert command["disabled"] == "true" and command["client"] == "None"
    assert [h for h in command["hosts"] if h not in ("localhost", "127.0.0.1", "::1")] == []
    workers = [r for r in reports if r["when"] == "start" and r["argv"][-1].endswith(".json")]
    assert workers and all(w["disabled"] == "true" for w in workers)


def test_users_own_telemetry_setting_wins(tmp_path: Path) -> None:
    done = run(
        [
            sys.executable,
            "-c",
            "import bench.commands.cli, os; bench.commands.cli.main(['list']);"
            " print(os.environ['MLFLOW_DISABLE_TELEMETRY'])",
        ],
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "false"},
    )
    assert done.stdout.splitlines()[-1] == "false"


@pytest.mark.parametrize(
    "command",
    [["report", "0" * 32], ["compare", "0" * 32, "1" * 32], ["run", "--resume", "0" * 32]],
    ids=["report", "compare", "resume"],
)
def test_a_command_that_reads_a_store_does_not_make_one(tmp_path: Path, command: list[str]) -> None:
    """A mistyped path is no store: it is not made, empty, for the command to find nothing in."""
    database = tmp_path / "typo" / "mlflow.db"
    done = run(bench_command(*command, "--tracking-uri", f"sqlite:///{database}"))
    _assert_one_line_before_training(done, f"no store at {database}; give a store's")
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        (
            "postgresql://team:s3cret@127.0.0.1:5432/mlp_bench",
            "tracking URI postgresql://team:***@127.0.0.1:5432/mlp_bench is a database: serve it"
            " with `mlp-bench server --database-uri postgresql://team:***@127.0.0.1:5432/"
            "mlp_bench` and pass that server's http://HOST:PORT as --tracking-uri",
        ),
        ("mlruns", "is a plain path (MLflow's retired file store); give a SQLite file"),
    ],
    ids=["database", "path"],
)
def test_a_database_or_a_plain_path_is_refused_before_anything_is_recorded(
    tmp_path: Path, uri: str, words: str
) -> None:
    """A team's database is written through `mlp-bench server`: pointed at directly, a run
    left a FAILED parent in it. A path is MLflow's retired file store, not a server."""
    if uri == "mlruns":
        uri = str(tmp_path / "mlruns")
    done = run(tiny_run(uri))
    _assert_one_line_before_training(done, words)
    assert "s3cret" not in done.stderr and "is a server" not in done.stderr
    assert not (tmp_path / "mlruns").exists()
