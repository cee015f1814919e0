"""The Ray executor (`--executor ray`): each cell is one Ray task that runs the same
`python -m bench.execution.worker` process on a node of a cluster; the driver stays the only
process that writes to MLflow.

The only module that imports ray (the `.[ray]` extra), and only when this executor is chosen.
A cell asks for all the cores of a node by default, so that no two cells share a node's cores
and their timings stay clean, and for one GPU if it is a GPU cell. A task whose node or worker
process dies is retried a bounded number of times; a cell that fails on its own is not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core.errors import BenchError
from bench.core.options import Options
from bench.core.types import Cell, CellRun
from bench.execution.matrix import (
    NodePeak,
    WorkerExit,
    cell_request,
    collect_cell_run,
    measure,
    spawn_worker,
)
from bench.execution.peaks import peak_label, peak_request

DEFAULT_RETRIES = 2
# Starting a local Ray or reaching a cluster: past this, the address is taken as unreachable.
CONNECT_TIMEOUT_S = 10.0
_RETURNED = ("result.json", "step_losses.npy", "parameters.npz", "worker.log")


@dataclass(frozen=True)
class RaySettings:
    """--ray-address (None: a local Ray for this invocation), --cpus-per-cell (None: all the
    cores of the smallest node), --retries."""

    address: str | None = None
    cpus_per_cell: int | None = None
    retries: int = DEFAULT_RETRIES


def _lost_errors() -> tuple[type[BaseException], ...]:
    """Ray's errors for a task whose node or worker process died: worth another attempt."""
    from ray import exceptions as e

    return (
        e.WorkerCrashedError,
        e.NodeDiedError,
        e.LocalRayletDiedError,
        e.ObjectLostError,
        e.OwnerDiedError,
    )


def _check_reachable(address: str) -> None:
    """An address that answers no TCP connection fails in seconds, in one line (Ray itself
    retried for a minute and more)."""
    text = address.removeprefix("ray://")
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise BenchError(
            f"--ray-address {address!r} is not HOST:PORT, ray://HOST:PORT or auto; give the"
            " address `ray start --head` printed"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise BenchError(
            f"Ray cluster at {address} is unreachable ({exc.strerror or exc}); start it with"
            " `ray start --head` or fix --ray-address"
        ) from None


def _has_token() -> bool:
    """Whether this user has a Ray authentication token (where `ray start` makes one)."""
    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return True
    return (Path.home() / ".ray" / "auth_token").is_file()


def connect(settings: RaySettings, devices: list[str]) -> RayExecutor:
    """Join the cluster (or start a local Ray) and check it can run the cells: every error
    here is one line, before the store is written or any cell runs."""
    # Read by Ray at import.
    if settings.address is not None and _has_token():
        # A cluster from `ray start` uses token authentication once a token exists (Ray 2.5x
        # and later), but a driver joining it sent none unless told to.
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    try:
        import ray
    except ImportError:
        raise BenchError(
            "--executor ray needs Ray: pip install -e '.[ray]' (nox -s bench installs it)"
        ) from None
    if settings.address not in (None, "auto"):
        _check_reachable(settings.address)
    try:
        ray.init(
            address=settings.address,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
    except Exception as exc:  # Ray's ConnectionError and friends, in one line
        reason = " ".join(str(exc).split())[:200]
        where = settings.address or "a local Ray"
        raise BenchError(
            f"cannot start or join {where} ({type(exc).__name__}: {reason}); start the cluster"
            " with `ray start --head` or fix --ray-address"
        ) from None
    try:
        cpus = _check_resources(settings, devices)
    except BaseException:
        ray.shutdown()
        raise
    return RayExecutor(cpus, settings.retries)


def _check_resources(settings: RaySettings, devices: list[str]) -> int:
    """The CPUs each cell asks for; a cluster that cannot run the cells is an error now."""
    import ray

    nodes = [node for node in ray.nodes() if node.get("Alive")]
    cores = [int(node["Resources"].get("CPU", 0)) for node in nodes]
    gpus = sum(int(node["Resources"].get("GPU", 0)) for node in nodes)
    if not any(cores):
        raise BenchError("the Ray cluster has no node with CPUs; add a worker node")
    per_cell = settings.cpus_per_cell or min(c for c in cores if c > 0)
    if per_cell > max(cores):
        raise BenchError(
            f"--cpus-per-cell {per_cell}: no node of the Ray cluster has that many (the"
            f" largest has {max(cores)}); lower it"
        )
    if "gpu" in devices and gpus == 0:
        raise BenchError(
            f"--device gpu: the Ray cluster has no GPU ({len(nodes)} node(s), {sum(cores)}"
            " CPUs); run --device cpu, or add a node with a GPU"
        )
    return per_cell


_FOLDER_PREFIX = "mlp-bench-ray-"


@contextlib.contextmanager
def task_folder() -> Iterator[Path]:
    """A task's work folder, named by its Ray worker's pid: a worker killed mid-cell (its
    node's memory, Ctrl-C of the driver, `kill -9`) never removes it, so the next task on the
    node, or the driver on its way out, does (remove_orphaned_folders)."""
    folder = Path(tempfile.mkdtemp(prefix=f"{_FOLDER_PREFIX}{os.getpid()}-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_orphaned_folders() -> None:
    """Remove this host's task folders whose Ray worker process is gone."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_FOLDER_PREFIX}*-*"):
        pid = folder.name.removeprefix(_FOLDER_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class _PeakBook:
    """The peak matmul rate measured on each node, shared by the cells' tasks (a Ray actor):
    the first cell on a node measures it, before it trains; later cells there reuse it."""

    def __init__(self) -> None:
        self._peaks: dict[NodePeak, float] = {}

    def get(self, key: NodePeak) -> float | None:
        return self._peaks.get(key)

    def put(self, key: NodePeak, gflops: float) -> None:
        self._peaks.setdefault(key, gflops)

    def all(self) -> dict[NodePeak, float]:
        return dict(self._peaks)


def _cell_task(
    request: dict[str, Any],
    peak: dict[str, Any] | None,
    book: Any,
    timeout_s: float | None,
) -> dict[str, Any]:
    """Runs on a node: the node's peak if no cell there measured it yet, then the cell's worker
    process; returns the worker's files and exit, for the driver to record."""
    import ray

    started = time.monotonic()
    node = {"host": socket.gethostname(), "ray_node_id": ray.get_runtime_context().get_node_id()}
    remove_orphaned_folders()  # of this node's tasks whose Ray worker was killed
    with task_folder() as work:
        gflops, peak_error = None, None
        if peak is not None:
            key = (node["ray_node_id"], peak["backend"], peak["device"])
            gflops = ray.get(book.get.remote(key))
            if gflops is None:
                (work / "peak").mkdir()
                try:
                    gflops = measure(peak, work / "peak", "peak", "gflops", peak_label(peak))
                    ray.get(book.put.remote(key, gflops))
                except BenchError as exc:
                    peak_error = str(exc)
        done = spawn_worker(request, work, lambda event: None, timeout_s)
        files = {name: (work / name).read_bytes() for name in _RETURNED if (work / name).exists()}
    return {
        "exit": dataclasses.asdict(done),
        "files": files,
        "node": node,
        "peak": gflops,
        "peak_error": peak_error,
        "task_seconds": time.monotonic() - started,
    }


class RayExecutor:
    """Submits every cell at once; Ray runs as many as the cluster's resources allow and the
    driver records each as it comes back (in the order they finish)."""

    concurrent = True

    def __init__(self, cpus_per_cell: int, retries: int) -> None:
        import ray

        self.cpus_per_cell = cpus_per_cell
        self.retries = retries
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # On the driver's node, which lives as long as the invocation. Left to Ray, it went to
        # any node, and a node that died took it along: every cell after failed on it.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self._book = ray.remote(num_cpus=0)(_PeakBook).options(scheduling_strategy=here).remote()
        self._task = ray.remote(_cell_task)

    def describe(self) -> str:
        """The cluster in one line, for the invocation's first lines."""
        import ray

        alive = [node for node in ray.nodes() if node.get("Alive")]
        cpus = sum(int(node["Resources"].get("CPU", 0)) for node in alive)
        gpus = sum(int(node["Resources"].get("GPU", 0)) for node in alive)
        return (
            f"Ray: {len(alive)} node(s), {cpus} CPUs, {gpus} GPUs; each cell takes"
            f" {self.cpus_per_cell} CPUs"
        )

    def node_peaks(self) -> dict[NodePeak, float]:
        """(node id, backend, device) -> GFLOP/s, as measured on each node that ran cells."""
        import ray

        return dict(ray.get(self._book.all.remote()))

    def _submit(
        self,
        cell: Cell,
        options: Options,
        stage_text: str | None,
        timeout_s: float,
        measure_peak: bool,
    ) -> Any:
        peak = peak_request(cell.backend, cell.device, options) if measure_peak else None
        return self._task.options(
            num_cpus=self.cpus_per_cell,
            num_gpus=1 if cell.device == "gpu" else 0,
            max_retries=0,  # lost attempts are retried here, where they are counted
            name=f"cell {cell.name}",
        ).remote(cell_request(cell, options, stage_text), peak, self._book, timeout_s)

    def run_cells(
        self,
        cells: list[Cell],
        options: Options,
        stage_texts: Mapping[str, str],
        time_limit: Callable[[Cell], float],
        measure_peaks: bool,
    ) -> Iterator[CellRun]:
        """Every cell's run, as each finishes; those still out are cancelled if the caller
        stops early (an interrupt, a store that stopped taking writes)."""
        import ray

        lost = _lost_errors()

        def submit(cell: Cell) -> Any:
            text = stage_texts.get(cell.stage)
            return self._submit(cell, options, text, time_limit(cell), measure_peaks)

        out: dict[Any, tuple[Cell, list[str], float]] = {
            submit(cell): (cell, [], time.perf_counter()) for cell in cells
        }
        try:
            while out:
                [ref], _ = ray.wait(list(out), num_returns=1)
                cell, retries, submitted = out.pop(ref)
                returned = None
                try:
                    returned = ray.get(ref)
                except lost as exc:
                    retries = [*retries, _one_line(exc)]
                    if len(retries) <= self.retries:
                        print(
                            f"{cell.name}: its Ray worker was lost ({retries[-1]}); retry"
                            f" {len(retries)} of {self.retries}",
                            flush=True,
                        )
                        out[submit(cell)] = (cell, retries, time.perf_counter())
                        continue
                with tempfile.TemporaryDirectory(prefix="mlp-bench-") as tmp:
                    if returned is None:
                        run = _lost_run(cell, retries, submitted, Path(tmp))
                    else:
                        run = _collect(cell, returned, Path(tmp), time_limit(cell))
                    run.retries = retries
                    yield run  # recorded by the caller while its folder still exists
        finally:
            _cancel(list(out))

    def close(self) -> None:
        import ray

        ray.shutdown()
        remove_orphaned_folders()  # of workers killed on this host (a local Ray's, at least)


# How long the driver waits for cancelled tasks' workers to be killed before it removes
# their folders on this host (a worker being killed takes well under a second).
_CANCEL_WAIT_S = 10.0


def _cancel(refs: list[Any]) -> None:
    """Cancel the tasks still out (an interrupt, a store that stopped taking writes): their
    workers are killed, so the folders of those on this host are removed here."""
    import ray

    if not refs:
        return
    for ref in refs:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)
    with contextlib.suppress(Exception):
        ray.wait(refs, num_returns=len(refs), timeout=_CANCEL_WAIT_S)
    remove_orphaned_folders()


def _collect(cell: Cell, returned: dict[str, Any], folder: Path, timeout_s: float) -> CellRun:
    """The task's files written back into a folder of the driver, read as a local cell's."""
    for name, data in returned["files"].items():
        (folder / name).write_bytes(data)
    done = WorkerExit(**returned["exit"])
    run = collect_cell_run(cell, done, folder, timeout_s)
    run.node = dict(returned["node"])
    if returned["peak"] is not None:
        run.peaks = {(cell.backend, cell.device): float(returned["peak"])}
    elif returned["peak_error"]:
        print(f"{cell.name}: {returned['peak_error']}; no roofline for it", flush=True)
    # The driver's time around the task: queueing, scheduling, moving its files.
    run.timings["started_at"] = time.perf_counter() - float(returned["task_seconds"])
    return run


def _lost_run(cell: Cell, retries: list[str], submitted: float, folder: Path) -> CellRun:
    """A cell whose every attempt was lost: FAILED, with why each attempt ended as its log."""
    log = folder / "worker.log"
    log.write_text("\n".join(f"attempt {i}: {why}" for i, why in enumerate(retries, 1)) + "\n")
    error = f"its Ray worker was lost {len(retries)} times (last: {retries[-1]})"
    run = CellRun(cell, None, error, time.perf_counter() - submitted, log, retries=retries)
    run.timings["started_at"] = submitted
    return run


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    return re.sub(r"\s+", " ", f"{type(exc).__name__}: {text}")[:200]
