"""The Ray executor on a real local Ray cluster: a small matrix into a real PostgreSQL-backed
tracking server, a Ray worker killed mid-cell, two nodes of which one dies mid-cell, and a
cluster that cannot run the cells."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends import installed_backends
from tests.conftest import mnist_dir
from tests.live import PATIENCE_S, as_a_terminal_job, bench, bench_command, finish, store_runs
from tests.services import free_port, need_ray, ray_cluster

# The slow tier: a real Ray cluster and a real PostgreSQL-backed server.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::ResourceWarning")]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    with ray_cluster(cpus=2) as address:
        yield address


def _ray_run(address: str, uri: str, *args: str) -> list[str]:
    """The arguments of a `bench run` on the Ray cluster at `address`."""
    return [
        "run",
        "--executor",
        "ray",
        "--ray-address",
        address,
        "--data-dir",
        str(mnist_dir()),
        "--tracking-uri",
        uri,
        *args,
    ]


def test_a_small_matrix_through_ray_into_the_server_records_every_cell(
    cluster: str, shared_server: tuple[str, Path]
) -> None:
    uri, folder = shared_server
    backends = installed_backends()[:2]
    done = bench(
        *_ray_run(cluster, uri, "--stage", "relu-xavier", "--experiment", "ray-matrix"),
        *[arg for b in backends for arg in ("--backend", b)],
        *["--epochs", "1", "--seeds", "2"],
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Ray: 1 node(s), 2 CPUs, 0 GPUs; each cell takes 2 CPUs" in done.stdout
    runs = [r for r in store_runs(uri) if r.info.experiment_id == _experiment(uri, "ray-matrix")]
    cells = [r for r in runs if r.data.tags["kind"] == "cell"]
    assert len(cells) == len(backends) * 2
    assert {r.info.status for r in runs} == {"FINISHED"}
    nodes = {r.data.tags["node_ray_node_id"] for r in cells}
    assert len(nodes) == 1 and {r.data.tags["node_host"] for r in cells} == {os.uname().nodename}
    for cell in cells:
        # The node's peak, measured there before its first cell, is each cell's roofline.
        assert cell.data.metrics["peak_gflops"] > 0 and cell.data.metrics["retries"] == 0
        # Made when the cell came back, its run starts when the cell started on its node.
        duration_s = (cell.info.end_time - cell.info.start_time) / 1000
        assert duration_s >= cell.data.metrics["wall_seconds"]
    [parent] = [r for r in runs if r.data.tags["kind"] == "matrix"]
    node = next(iter(nodes))[:16]
    for backend in backends:
        assert parent.data.metrics[f"node_peak_gflops/{node}/{backend}_cpu"] > 0
    groups = [r for r in runs if r.data.tags["kind"] == "group"]
    assert len(groups) == len(backends)
    assert all(g.data.metrics["test_accuracy_n"] == 2 for g in groups)
    # Artifacts went through the server into its own folder.
    stored = {p.name for p in (folder / "artifacts").rglob("*") if p.is_file()}
    assert {"relu-xavier.toml", "step_losses.csv", "worker.log"} <= stored


def _experiment(uri: str, name: str) -> str:
    from mlflow.tracking import MlflowClient

    return str(MlflowClient(uri).get_experiment_by_name(name).experiment_id)


def _cell_workers_of_ray() -> list[tuple[int, int, Path]]:
    """(worker pid, its parent Ray worker's pid, its folder) of each cell's worker process
    run by a Ray task now: on two nodes two run at once, and either may be the one sought."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            parent_argv = Path(f"/proc/{parent}/cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if b"bench.execution.worker" in argv and parent_argv.startswith(b"ray::"):
            found.append((int(entry.name), parent, Path(argv[-2].decode()).parent))
    return found


def _start_ray_run(cluster: str, tmp_path: Path) -> subprocess.Popen[str]:
    """A `bench run` of one 6-epoch cell on the cluster, as a terminal starts it: the tests act
    on it after its first epoch, and five more (~2 s) leave room to land before it ends."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    command = _ray_run(cluster, uri, "--stage", "relu-xavier", "--epochs", "6", "--no-peak")
    return subprocess.Popen(
        bench_command(*command, "--backend", installed_backends()[-1]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_a_terminal_job,
    )


def _cell_mid_epochs(process: subprocess.Popen[str]) -> tuple[int, int, Path]:
    """The cell worker run by a Ray task, once it has trained its first epoch."""
    deadline = time.monotonic() + PATIENCE_S
    while time.monotonic() < deadline and process.poll() is None:
        for found in _cell_workers_of_ray():
            if _says(found[2] / "worker.log", "epoch 1:"):
                return found
        time.sleep(0.2)
    raise AssertionError("no cell worker under a Ray worker reached its first epoch")


def test_a_ray_worker_killed_mid_cell_is_retried_and_recorded(cluster: str, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    process = _start_ray_run(cluster, tmp_path)
    killed = _cell_mid_epochs(process)
    os.kill(killed[1], signal.SIGKILL)  # the Ray worker running the task: mid-cell
    code, out, err = finish(process)
    assert code == 0, out + err
    assert "its Ray worker was lost" in out and "retry 1 of 2" in out, out + err
    [cell] = [r for r in store_runs(uri) if r.data.tags["kind"] == "cell"]
    assert cell.info.status == "FINISHED" and cell.data.metrics["retries"] == 1
    assert cell.data.tags["retries"] == "1"
    assert "WorkerCrashedError" in cell.data.tags["retried_after"]
    with pytest.raises(ProcessLookupError):  # the first attempt's worker died with its task
        os.kill(killed[0], 0)
    assert not killed[2].exists()  # its folder, which the killed Ray worker could not remove


def test_ctrl_c_of_the_driver_leaves_no_task_folder(cluster: str, tmp_path: Path) -> None:
    process = _start_ray_run(cluster, tmp_path)
    running = _cell_mid_epochs(process)
    process.send_signal(signal.SIGINT)
    code, out, err = finish(process)
    assert code == 130, out + err
    assert not running[2].exists()  # its Ray worker was killed by the cancel: removed here


def test_a_cell_that_fails_on_its_own_is_not_retried(cluster: str, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = bench(
        *_ray_run(cluster, uri, "--stage", "relu-xavier", "--epochs", "1", "--no-peak"),
        "--backend",
        installed_backends()[-1],
        "--cell-timeout",
        "1",  # killed by its own time limit: the cell's failure, not Ray's
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "retry" not in done.stdout
    [cell] = [r for r in store_runs(uri) if r.data.tags["kind"] == "cell"]
    assert cell.info.status == "FAILED" and "--cell-timeout 1" in cell.data.tags["error"]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--device", "gpu"), "the Ray cluster has no GPU"),
        (("--cpus-per-cell", "64"), "no node of the Ray cluster has that many"),
    ],
    ids=["gpu-on-a-cpu-cluster", "more-cpus-than-a-node"],
)
def test_a_cluster_that_cannot_run_the_cells_is_one_line_exit_2(
    cluster: str, tmp_path: Path, args: tuple[str, ...], words: str
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = bench(*_ray_run(cluster, uri, "--epochs", "1", *args))
    assert done.returncode == 2, done.stdout + done.stderr
    assert words in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "mlflow.db").exists()  # before the store, before any cell


def test_an_unreachable_ray_address_is_one_line_exit_2(tmp_path: Path) -> None:
    need_ray()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = bench(*_ray_run(f"127.0.0.1:{free_port()}", uri, "--epochs", "1"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert "unreachable" in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "mlflow.db").exists()


def test_ray_flags_without_the_ray_executor_are_refused(tmp_path: Path) -> None:
    done = bench("run", "--ray-address", "auto", "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert done.returncode == 2 and "--executor ray" in done.stderr


def test_ray_is_imported_by_the_ray_executor_only() -> None:
    """The extra stays optional: `run` (local), its planning and execution import no ray."""
    code = (
        "import sys, bench.commands.cli, bench.commands.planning, bench.execution.invocation;"
        " print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def _ray_node(*args: str) -> subprocess.Popen[bytes]:
    """`ray start ... --block`: a node (its own raylet) in a process group of its own, so
    that the whole node can be killed at once, as a machine that dies."""
    return subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        # A dead node is noticed in seconds, not Ray's default half a minute.
        env={
            **os.environ,
            "RAY_health_check_period_ms": "500",
            "RAY_health_check_timeout_ms": "500",
            "RAY_health_check_failure_threshold": "3",
        },
    )


def _kill_node(node: subprocess.Popen[bytes]) -> None:
    """Every process of the node at once, as a machine that dies: its process group, and its
    descendants that left the group (a Ray worker of a group of its own could otherwise still
    hand its finished cell back to the driver, the node already gone)."""
    descendants = [pid for pid in _pids() if node.pid in _ancestors(pid)]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.pid, signal.SIGKILL)
    for pid in descendants:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    node.wait()


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


@contextlib.contextmanager
def _two_nodes() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A head and a second node of 1 CPU each on this machine; yields the head's address and
    the second node's process (which may still be joining)."""
    need_ray()
    port = free_port()
    common = ("--num-cpus=1", "--num-gpus=0", "--disable-usage-stats")
    head = _ray_node("--head", f"--port={port}", "--include-dashboard=false", *common)
    nodes = [head]
    try:
        address = f"127.0.0.1:{port}"
        # The second node joins once the head answers.
        deadline = time.monotonic() + PATIENCE_S
        while not _port_open(port):
            assert time.monotonic() < deadline and head.poll() is None, "the head did not start"
            time.sleep(0.2)
        second = _ray_node(f"--address={address}", *common)
        nodes.append(second)
        yield address, second
    finally:
        for node in reversed(nodes):
            _kill_node(node)


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _says(log: Path, words: str) -> bool:
    with contextlib.suppress(OSError):
        return words in log.read_text()
    return False


def _ancestors(pid: int) -> list[int]:
    found = []
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        found.append(pid)
    return found


# Once the second node has joined: how many of six peak books a driver makes are on a node
# other than its own.
_BOOKS_ELSEWHERE = """
import sys, time, ray
from bench.execution.ray_executor import RayExecutor
ray.init(address=sys.argv[1], logging_level="ERROR")
while sum(node["Alive"] for node in ray.nodes()) < 2:
    time.sleep(0.2)
here = ray.get_runtime_context().get_node_id()
def node(book):
    return ray.get(book.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id()))
print(sum(node(RayExecutor(1, 0)._book) != here for _ in range(6)))
"""


def test_a_matrix_across_two_nodes_survives_losing_one(tmp_path: Path) -> None:
    """Two raylets on this machine, a cell on each; the second node dies mid-cell: its cell
    is retried on the head, every cell is recorded once, with its node and each node's peak."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with _two_nodes() as (address, second):
        # The book of each node's peak is on the driver's node, which lives as long as the
        # invocation: on a node that died, it failed every cell after (placed at random,
        # six books all land here by chance one time in 64).
        books = subprocess.run(
            [sys.executable, "-c", _BOOKS_ELSEWHERE, address],
            capture_output=True,
            text=True,
            timeout=PATIENCE_S,
        )
        assert books.stdout.strip() == "0", books.stdout + books.stderr
        # Five epochs (~2 s of training): a one-epoch cell could end between two looks for it.
        command = _ray_run(address, uri, "--stage", "relu-xavier", "--epochs", "5")
        process = subprocess.Popen(
            bench_command(*command, "--backend", "torch", "--seeds", "2"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + PATIENCE_S
        while time.monotonic() < deadline and process.poll() is None:
            # Killed once its cell trains: its peak is measured (before the cell) and kept.
            if any(
                second.pid in _ancestors(pid) and _says(folder / "worker.log", "cell ")
                for pid, _, folder in _cell_workers_of_ray()
            ):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("no cell trained on the second node")
        _kill_node(second)
        code, out, err = finish(process)
    assert code == 0, out + err
    assert "Ray: 2 node(s), 2 CPUs" in out
    assert "its Ray worker was lost" in out and "retry 1 of 2" in out, out + err
    runs = store_runs(uri)
    cells = [r for r in runs if r.data.tags["kind"] == "cell"]
    assert sorted(r.data.tags["seed"] for r in cells) == ["0", "1"]  # each once
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.data.metrics["retries"] for r in cells) == [0, 1]
    assert all(r.data.tags["node_ray_node_id"] for r in cells)
    [parent] = [r for r in runs if r.data.tags["kind"] == "matrix"]
    peaks = [k for k in parent.data.metrics if k.startswith("node_peak_gflops/")]
    assert len(peaks) == 2, parent.data.metrics  # each node measured its own
