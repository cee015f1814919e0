"""`bench run --resume PARENT`: a killed invocation's unfinished cells run under its parent
run, its runs left RUNNING ended KILLED first; what cannot be resumed is one line, exit 2."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.live import PATIENCE_S, bench, store_runs, tiny_run

# The slow tier: a killed invocation and its resume, real processes.
pytestmark = pytest.mark.slow


def _killed_after_its_first_cell(uri: str) -> str:
    """A 3-seed invocation, killed (-9) while its second cell trains; its parent's id."""
    process = subprocess.Popen(
        tiny_run(uri, "--seeds", "3", "--epochs", "4"),  # a cell lasts long enough to be seen
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    for line in process.stdout:  # a line per recorded cell: "[1/3] relu-xavier/..."
        if line.startswith("[1/3]"):
            break
    # The second cell's run is open when the invocation dies.
    deadline = time.monotonic() + PATIENCE_S
    while not any(
        r.data.tags.get("seed") == "1" and r.info.status == "RUNNING" for r in store_runs(uri)
    ):
        assert time.monotonic() < deadline and process.poll() is None, "no second cell"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=PATIENCE_S)
    [parent] = [r for r in store_runs(uri) if r.data.tags["kind"] == "matrix"]
    return str(parent.info.run_id)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """(store, parent id, the resume's output) of a killed invocation, resumed once."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('resume')}/mlflow.db"
    parent = _killed_after_its_first_cell(uri)
    done = bench("run", "--resume", parent, "--tracking-uri", uri)
    assert done.returncode == 0, done.stdout + done.stderr
    return uri, parent, done.stdout


def test_only_the_unfinished_cells_run_under_the_same_parent(
    resumed: tuple[str, str, str],
) -> None:
    uri, parent_id, out = resumed
    assert f"resuming {parent_id}: 2 of its 3 cells did not finish" in out
    runs = store_runs(uri)
    [parent] = [r for r in runs if r.data.tags["kind"] == "matrix"]
    assert parent.info.status == "FINISHED" and parent.data.tags["resumes"] == "1"
    assert parent.data.metrics["cells"] == 3
    cells = [r for r in runs if r.data.tags["kind"] == "cell"]
    assert all(r.data.tags["invocation"] == parent_id for r in cells)
    finished = sorted(r.data.tags["seed"] for r in cells if r.info.status == "FINISHED")
    assert finished == ["0", "1", "2"]  # seed 0 once: it had finished before
    # The cell the kill interrupted was left RUNNING; it is KILLED, and ran again.
    assert [r.data.tags["seed"] for r in cells if r.info.status == "KILLED"] == ["1"]
    [group] = [r for r in runs if r.data.tags["kind"] == "group"]
    assert group.info.status == "FINISHED" and group.data.metrics["test_accuracy_n"] == 3


def test_the_report_takes_each_cells_latest_run(resumed: tuple[str, str, str]) -> None:
    uri, parent_id, _ = resumed
    done = bench("report", parent_id, "--tracking-uri", uri)
    assert done.returncode == 0, done.stdout + done.stderr
    page = Path(done.stdout.strip().rsplit(": ", 1)[1]).read_text()
    cells_table = page.split("<table", 2)[1]  # the first table: a row per cell
    rows = re.findall(r"<tr>\s*<td[^>]*>relu-xavier</td>(.*?)</tr>", cells_table, re.S)
    seeds = [re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)[2] for row in rows]
    assert sorted(seeds) == ["0", "1", "2"]  # one row per cell: its latest run


def test_a_finished_invocation_has_nothing_to_resume(resumed: tuple[str, str, str]) -> None:
    uri, parent_id, _ = resumed
    done = bench("run", "--resume", parent_id, "--tracking-uri", uri)
    assert done.returncode == 2 and "no cell left to run: all 3 finished" in done.stderr


@pytest.mark.parametrize(
    ("target", "extra", "words"),
    [
        ("parent", ("--stage", "adam"), "drop --stage"),
        ("cell", (), "is not a `bench run` invocation"),
        ("unknown", (), "no run 'unknown'"),
    ],
    ids=["changes-the-plan", "a-cell-run", "unknown-id"],
)
def test_what_cannot_be_resumed_is_one_line_exit_2(
    resumed: tuple[str, str, str], target: str, extra: tuple[str, ...], words: str
) -> None:
    uri, parent_id, _ = resumed
    cell = next(r for r in store_runs(uri) if r.data.tags["kind"] == "cell")
    run_id = {"parent": parent_id, "cell": cell.info.run_id, "unknown": "unknown"}[target]
    done = bench("run", "--resume", run_id, "--tracking-uri", uri, *extra)
    assert done.returncode == 2, done.stdout + done.stderr
    assert words in done.stderr and done.stderr.count("\n") == 1


def test_an_invocation_recorded_without_its_plan_cannot_be_resumed(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("old")
    old = client.create_run(experiment, tags={"kind": "matrix"})
    client.set_terminated(old.info.run_id, "KILLED")
    done = bench("run", "--resume", old.info.run_id, "--tracking-uri", uri)
    assert done.returncode == 2 and "recorded without its plan" in done.stderr
