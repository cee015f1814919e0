"""`bench run --resume PARENT`: a killed invocation's unfinished cells run under its parent
run, its runs left RUNNING ended KILLED first; what cannot be resumed is one line, exit 2."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.recording.store import ARTIFACTS
from tests.conftest import ROOT
from tests.faults import barrier, killed
from tests.live import PATIENCE_S, bench, bench_command, finish, store_runs, tiny_run

# The slow tier: a killed invocation and its resume, real processes.
pytestmark = pytest.mark.slow


def _killed_after_its_first_cell(uri: str) -> str:
    """A 3-seed invocation, killed (-9) while its second cell trains; its parent's id."""
    process = subprocess.Popen(
        tiny_run(uri, "--seeds", "3", "--epochs", "2"),  # a cell lasts long enough to be seen
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
    # The table of cells, a row each (the results at a glance come first).
    cells_table = page.split("<h2>Each cell</h2>", 1)[1].split("</table>", 1)[0]
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


def _failed_invocation(folder: Path) -> tuple[str, str]:
    """(store, parent id) of a one-cell invocation whose worker was killed before it trained:
    the least that leaves a cell to resume."""
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{folder}/mlflow.db"
    env = killed(folder / "fault", "bench.execution.runner", "run_cell", signal.SIGKILL)
    done = subprocess.run(
        tiny_run(uri), cwd=ROOT, capture_output=True, text=True, timeout=PATIENCE_S, env=env
    )
    assert done.returncode == 1, done.stdout + done.stderr
    [parent] = [r for r in store_runs(uri) if r.data.tags["kind"] == "matrix"]
    return uri, str(parent.info.run_id)


@pytest.fixture(scope="module")
def failed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Path]:
    """(store folder, parent id, its invocation.json) of a one-cell invocation that failed."""
    folder = tmp_path_factory.mktemp("failed")
    _, parent_id = _failed_invocation(folder)
    [plan] = folder.rglob(f"{parent_id}/artifacts/invocation.json")
    return folder, parent_id, plan


def _copy_of(failed: tuple[Path, str, Path], folder: Path) -> str:
    """A copy of the failed invocation's store, for a test to change, with its artifacts
    folder: a store copied without it gets an empty folder of its own, with no plan."""
    shutil.copy(failed[0] / "mlflow.db", folder / "mlflow.db")
    shutil.copytree(failed[0] / ARTIFACTS, folder / ARTIFACTS)
    return f"sqlite:///{folder}/mlflow.db"


def _plan_in(failed: tuple[Path, str, Path], folder: Path) -> Path:
    """The invocation.json of the copy of `failed` in `folder`."""
    return folder / failed[2].relative_to(failed[0])


def _at_once(
    command: list[str], env: dict[str, str], count: int
) -> list[tuple[int, int, str, str]]:
    """`count` processes of `command` started together: (pid, exit code, stdout, stderr) of each."""
    processes = [
        subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for _ in range(count)
    ]
    return [(process.pid, *finish(process)) for process in processes]


def test_two_resumes_started_together_run_the_cells_once(
    failed: tuple[Path, str, Path], tmp_path: Path
) -> None:
    uri, parent_id = _copy_of(failed, tmp_path), failed[1]
    # Both have read the invocation (planned) before either writes to it: the race, provoked.
    env = barrier(tmp_path / "meet", "bench.execution.invocation", "execute", parties=2)
    ends = _at_once(bench_command("run", "--resume", parent_id, "--tracking-uri", uri), env, 2)
    [(winner, code, out, _)] = [end for end in ends if end[1] != 2]
    [(_, _, _, err)] = [end for end in ends if end[1] == 2]
    assert code == 0, out
    assert err.count("\n") == 1 and "is being resumed by another process" in err, err
    assert f"(pid {winner} on {socket.gethostname()})" in err
    runs = store_runs(uri)
    [parent] = [r for r in runs if r.data.tags["kind"] == "matrix"]
    assert parent.info.status == "FINISHED" and parent.data.tags["resumes"] == "1"
    cells = sorted(r.info.status for r in runs if r.data.tags["kind"] == "cell")
    assert cells == ["FAILED", "FINISHED"]  # the killed worker's, then the one resume's


def test_a_resumes_tag_left_by_an_older_version_does_not_break_a_resume(
    failed: tuple[Path, str, Path], tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    uri, parent_id = _copy_of(failed, tmp_path), failed[1]
    MlflowClient(uri).set_tag(parent_id, "resumes", "abc")  # `--tag resumes=abc` was accepted
    done = bench("run", "--resume", parent_id, "--tracking-uri", uri)
    assert done.returncode == 0, done.stdout + done.stderr
    [parent] = [r for r in store_runs(uri) if r.data.tags["kind"] == "matrix"]
    assert parent.info.status == "FINISHED" and parent.data.tags["resumes"] == "1"


@pytest.mark.parametrize("key", ["resumes", "command", "group_run", "owner_pid", "node_id"])
def test_a_tag_the_harness_writes_is_refused_at_parse_time(tmp_path: Path, key: str) -> None:
    done = bench("run", "--tag", f"{key}=abc", "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"tag key {key!r} is the harness's own" in done.stderr
    assert not (tmp_path / "m.db").exists()


@contextlib.contextmanager
def _edited(plan_file: Path, change: str) -> Iterator[None]:
    """invocation.json changed on disk as a user could, restored on the way out."""
    original = plan_file.read_text()
    plan = json.loads(original)
    if change == "lr":
        [(name, text)] = plan["stage_texts"].items()
        assert "learning_rate = 0.1" in text
        plan["stage_texts"][name] = text.replace("learning_rate = 0.1", "learning_rate = 0.9")
    elif change == "epochs":
        plan["options"]["epochs"] = 3
    elif change == "seed":
        plan["seeds"].append(1)
        plan["cells"].append({**plan["cells"][0], "seed": 1})
    elif change == "unknown-key":
        plan["options"]["turbo"] = True
    elif change == "extra-key":
        plan["notes"] = "x"
    plan_file.write_text("{not json" if change == "malformed" else json.dumps(plan))
    try:
        yield
    finally:
        plan_file.write_text(original)


def test_an_edited_plan_is_not_resumed(failed: tuple[Path, str, Path], tmp_path: Path) -> None:
    """invocation.json is an artifact: a learning rate edited on disk must not train under a
    parent that recorded another."""
    uri, parent_id = _copy_of(failed, tmp_path), failed[1]
    with _edited(_plan_in(failed, tmp_path), "lr"):
        done = bench("run", "--resume", parent_id, "--tracking-uri", uri)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert "invocation.json was changed after it was recorded" in done.stderr
    assert "run its command again instead" in done.stderr
    [parent] = [r for r in store_runs(uri) if r.data.tags["kind"] == "matrix"]
    assert parent.info.status == "FAILED" and "resumes" not in parent.data.tags


@pytest.mark.parametrize(
    ("change", "digest", "words"),
    [
        ("epochs", True, "was changed after it was recorded"),
        ("seed", True, "was changed after it was recorded"),
        ("epochs", False, "says epochs '3' where the run recorded '1'"),
        ("seed", False, "says cells '2' where the run recorded '1'"),
        ("unknown-key", False, "is malformed (TypeError"),
        ("extra-key", True, "not the keys"),
        ("malformed", True, "is not valid JSON"),
    ],
)
def test_a_plan_that_disagrees_with_its_parent_is_one_error(
    failed: tuple[Path, str, Path], tmp_path: Path, change: str, digest: bool, words: str
) -> None:
    """Read back in this process (the command line's side is the test above)."""
    from bench.core.errors import BenchError
    from bench.recording.resume_plan import load_invocation
    from bench.recording.tracking import Tracker

    uri, parent_id = _copy_of(failed, tmp_path), failed[1]
    if not digest:  # as recorded before the digest was
        with sqlite3.connect(tmp_path / "mlflow.db") as db:
            db.execute("DELETE FROM params WHERE key = 'invocation_sha256'")
    plan = _plan_in(failed, tmp_path)
    with _edited(plan, change), pytest.raises(BenchError, match=re.escape(words)):
        load_invocation(Tracker(uri, None).reader, parent_id)


_CLAIM = """
import sys
from bench.core.errors import BenchError
from bench.recording.resume_plan import RecordedInvocation
from bench.recording.tracking import Tracker

tracker = Tracker(sys.argv[1], None)
try:
    tracker.claim_resume(RecordedInvocation(sys.argv[2], "", {}, {}, {}, []))
except BenchError as error:
    print(error)
else:
    print("claimed")
"""


def test_of_resumes_claiming_at_once_through_a_server_one_wins(
    shared_server: tuple[str, Path], tmp_path: Path
) -> None:
    """The claim is the database's unique key, so it holds on the PostgreSQL behind a server
    (two workers) as on SQLite: two processes claim the same resume at the same moment."""
    from mlflow.tracking import MlflowClient

    uri = shared_server[0]
    client = MlflowClient(uri)
    experiment = client.create_experiment(f"claims-{tmp_path.name}")
    parent = client.create_run(experiment, tags={"kind": "matrix"}).info.run_id
    env = barrier(tmp_path / "meet", "bench.recording.tracking", "Tracker.claim_resume", 2)
    said = [
        out.strip()
        for _, _, out, _ in _at_once([sys.executable, "-c", _CLAIM, uri, parent], env, 2)
    ]
    lost = [words for words in said if words != "claimed"]
    assert len(lost) == 1, said
    assert all(f"invocation {parent} is being resumed by another process" in s for s in lost)
    assert list(client.get_run(parent).data.params) == ["resume_claim.1"]
