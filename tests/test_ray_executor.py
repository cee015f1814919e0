"""The Ray executor on a real local Ray cluster: a small matrix into a real PostgreSQL-backed
tracking server, a Ray worker killed mid-cell, and a cluster that cannot run the cells."""

from __future__ import annotations

import os
import signal
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


def _cell_worker_of_ray() -> tuple[int, int, Path] | None:
    """(worker pid, its parent Ray worker's pid, its folder) of a cell's worker process
    run by a Ray task, if one runs now."""
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
            return int(entry.name), parent, Path(argv[-2].decode()).parent
    return None


def _start_ray_run(cluster: str, tmp_path: Path) -> subprocess.Popen[str]:
    """A `bench run` of one 3-epoch cell on the cluster, as a terminal starts it."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    command = _ray_run(cluster, uri, "--stage", "relu-xavier", "--epochs", "3", "--no-peak")
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
        found = _cell_worker_of_ray()
        log = found[2] / "worker.log" if found else None
        if found and log is not None and log.exists() and "epoch 1:" in log.read_text():
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
    assert "its Ray worker was lost" in out and "retry 1 of 2" in out
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
