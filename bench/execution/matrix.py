"""The matrix: the product of cells, each run in its own process, recorded as it goes.

Executors plug in here: `LocalExecutor` runs cells one at a time on this machine, which is what a
clean timing needs; a cluster executor (Ray) would implement the same `execute` method.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from backends.keras_measured import KerasFit
from backends.keras_reference import keras_label
from bench.core.errors import BenchError
from bench.core.options import Options
from bench.core.types import Cell, CellResult, CellRun, EpochRecord, Product
from bench.execution import load_monitor
from bench.execution.peaks import attainable_request, peak_label, peak_request

# A cell's default time limit: generous, so that only a hung worker meets it. On 2 CPU cores
# the dropout stage trains at 54k (PyTorch) to 89k (TensorFlow) samples/s, ~1 s an epoch, and a
# second process on the same cores slows PyTorch more than ten-fold: 30 epochs get 32 minutes.
CELL_TIMEOUT_BASE_S = 120
CELL_TIMEOUT_PER_EPOCH_S = 60
MAX_CELL_TIMEOUT_S = 7 * 24 * 3600


def cell_time_limit(epochs: int) -> int:
    return CELL_TIMEOUT_BASE_S + CELL_TIMEOUT_PER_EPOCH_S * epochs


def build_cells(
    stages: Iterable[str], backends: Iterable[str], devices: Iterable[str], seeds: Iterable[int]
) -> list[Cell]:
    """Every combination, stage-major, so the table groups by stage."""
    return [
        Cell(stage=s, backend=b, device=d, seed=seed)  # type: ignore[arg-type]
        for s, b, d, seed in itertools.product(stages, backends, devices, seeds)
    ]


class Executor(Protocol):
    def execute(
        self,
        cell: Cell,
        options: Options,
        work_dir: Path,
        on_epoch: Callable[[EpochRecord], None],
        stage_text: str | None = None,
        timeout_s: float | None = None,
    ) -> CellRun:
        """Run one cell; `stage_text` replaces the named stage file (reproducing a record);
        past `timeout_s` the cell is ended and fails."""
        ...


@dataclass(frozen=True)
class Interpreter:
    """The Python a worker runs in and the harness source it imports. By default this
    process's own; `bench run --env` and `upgrade` give an environment's venv, and a bisect
    probe its commit's worktree."""

    python: str = sys.executable
    source: Path | None = None  # a folder holding bench/ and backends/; None: this process's

    @property
    def own(self) -> bool:
        return self.python == sys.executable and self.source is None

    def argv(self) -> list[str]:
        # -P: the current folder is not put before PYTHONPATH, so a checkout the user stands
        # in cannot replace the source the worker was given.
        flags = [] if self.own else ["-P"]
        return [self.python, *flags, "-m", "bench.execution.worker"]

    def environ(self) -> dict[str, str] | None:
        """The worker's environment variables (None: this process's own)."""
        if self.own:
            return None
        source = self.source or _own_source()
        return {**os.environ, "PYTHONPATH": str(source)}


# This process's Python and harness: what every worker ran in before environments.
OWN_PYTHON = Interpreter()


@functools.cache
def _own_source() -> Path:
    """A folder that holds this harness's bench/ and backends/ and nothing else: put on another
    venv's path, the folder they were imported from (site-packages, where the harness is
    installed) would also bring this venv's numpy and frameworks in front of that venv's own."""
    import backends
    import bench

    folder = Path(tempfile.mkdtemp(prefix="mlp-bench-source-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    for package in (bench, backends):
        assert package.__file__ is not None
        (folder / package.__name__).symlink_to(Path(package.__file__).parent)
    return folder


@dataclass
class WorkerExit:
    """How a worker process went: exit code, its error event if any, its events, timings."""

    code: int
    error: str | None
    events: list[dict[str, Any]]
    wall_seconds: float
    start_seconds: float  # spawn until the worker's first event: interpreter and harness import
    timed_out: bool = False  # killed at its time limit


def spawn_worker(
    request: dict[str, Any],
    work_dir: Path,
    on_event: Callable[[dict[str, Any]], None],
    timeout_s: float | None = None,
    interpreter: Interpreter = OWN_PYTHON,
) -> WorkerExit:
    """Run `python -m bench.execution.worker` on a request; stream its events; never leave it
    running, nor waiting past `timeout_s` (a hung worker was waited on forever)."""
    request_path = work_dir / "request.json"
    request_path.write_text(json.dumps({**request, "out_dir": str(work_dir)}))
    start = time.perf_counter()
    started = None
    error = None
    events = []
    with (work_dir / "worker.log").open("w") as log:
        process = subprocess.Popen(
            [*interpreter.argv(), str(request_path)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=interpreter.environ(),
        )
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            process.kill()

        timer = threading.Timer(timeout_s or threading.TIMEOUT_MAX, expire)
        timer.daemon = True
        timer.start()
        try:
            assert process.stdout is not None
            for line in process.stdout:
                event = json.loads(line)
                started = started or time.perf_counter()
                events.append(event)
                if event["type"] == "error":
                    error = event["message"]
                on_event(event)
            code = process.wait()
        except BaseException:  # interrupted: never leave the worker running
            process.kill()
            process.wait()
            raise
        finally:
            timer.cancel()
    end = time.perf_counter()
    return WorkerExit(
        code, error, events, end - start, (started or end) - start, timed_out=expired.is_set()
    )


def cell_request(cell: Cell, options: Options, stage_text: str | None) -> dict[str, Any]:
    """What a worker process is asked to train (its request.json, less the folder)."""
    return {
        "mode": "cell",
        "cell": asdict(cell),
        "options": asdict(options),
        "stage_text": stage_text,
    }


def epoch_record(event: dict[str, Any]) -> EpochRecord:
    return EpochRecord(**{k: v for k, v in event.items() if k != "type"})


def collect_cell_run(
    cell: Cell, done: WorkerExit, work_dir: Path, timeout_s: float | None
) -> CellRun:
    """The CellRun a finished worker left in `work_dir`: its result, or why it has none."""
    log_path = work_dir / "worker.log"
    result_path = work_dir / "result.json"
    timings = {"process_start": done.start_seconds}
    if done.code == 0 and result_path.exists():
        result = CellResult.load(json.loads(result_path.read_text()), work_dir)
        return CellRun(cell, result, None, done.wall_seconds, log_path, timings)
    if done.timed_out:
        error = f"exceeded --cell-timeout {timeout_s:g} s; the worker was killed"
    else:
        error = done.error or _crash_message(done.code, log_path)
    return CellRun(cell, None, error, done.wall_seconds, log_path, timings)


def keras_request(backend: str, stage: str, options: Options, device: str) -> dict[str, Any]:
    """What a worker process is asked to train with Keras `model.fit` (the reference)."""
    return {
        "mode": "keras",
        "backend": backend,
        "stage": stage,
        "device": device,
        "options": asdict(options),
    }


# A peak measured on one node of a cluster: (its node id, backend, device).
NodePeak = tuple[str, str, str]


class LocalExecutor:
    """Runs each cell as its own `python -m bench.execution.worker` process, one at a time,
    in `interpreter` (default: this process's Python and harness)."""

    def __init__(self, interpreter: Interpreter = OWN_PYTHON) -> None:
        self.interpreter = interpreter

    def execute(
        self,
        cell: Cell,
        options: Options,
        work_dir: Path,
        on_epoch: Callable[[EpochRecord], None],
        stage_text: str | None = None,
        timeout_s: float | None = None,
    ) -> CellRun:
        def on_event(event: dict[str, Any]) -> None:
            if event["type"] == "epoch":
                on_epoch(epoch_record(event))

        request = cell_request(cell, options, stage_text)
        done = spawn_worker(request, work_dir, on_event, timeout_s, self.interpreter)
        return collect_cell_run(cell, done, work_dir, timeout_s)

    def peak(self, backend: str, device: str, options: Options, work_dir: Path) -> float:
        """The device's peak float32 matmul GFLOP/s, measured through the framework, for cells
        that run with `options`: with their --tf32, the TF32 rate (GPUs only)."""
        request = peak_request(backend, device, options)
        label = peak_label(request)
        return measure(request, work_dir, "peak", "gflops", label, self.interpreter)

    def attainable(
        self,
        backend: str,
        device: str,
        options: Options,
        products: list[list[Product]],
        work_dir: Path,
    ) -> list[float]:
        """Seconds a step of each list of products takes, the products alone, timed as the
        cells that run with `options` compute them."""
        request = attainable_request(backend, device, options, products)
        what = f"the step's products on {backend}/{device}"
        event = _measured_event(request, work_dir, "attainable", what, interpreter=self.interpreter)
        return [float(s) for s in event["seconds"]]

    def keras_reference(
        self,
        backend: str,
        stage: str,
        options: Options,
        epochs: int,
        device: str,
        work_dir: Path,
    ) -> KerasFit:
        """The stage's model trained with Keras `model.fit` (the reference) on the Keras
        backend of `backend`'s framework, in a process of its own (Keras picks its backend
        at import), on the device and threads of the cells it is compared with, TF32 off."""
        request = keras_request(backend, stage, replace(options, epochs=epochs), device)
        what = f"the Keras reference on {keras_label(backend)} {device}"
        event = _measured_event(request, work_dir, "keras", what, cell_time_limit(epochs))
        return KerasFit(**{k: v for k, v in event.items() if k != "type"})


LOG_TAIL_LINES = 60


def run_alone(cell: Cell, options: Options, executor: Executor | None = None) -> CellRun:
    """One cell outside a matrix: no progress display, no MLflow, its work folder removed
    (a failed cell keeps the end of its log in `log_tail`)."""
    with tempfile.TemporaryDirectory(prefix="mlp-bench-") as tmp:
        run = (executor or LocalExecutor()).execute(cell, options, Path(tmp), lambda r: None)
        if run.result is None and run.log_path.exists():
            lines = run.log_path.read_text(errors="replace").splitlines()
            run.log_tail = "\n".join(lines[-LOG_TAIL_LINES:])
        return run


def measure(
    request: dict[str, Any],
    work_dir: Path,
    kind: str,
    key: str,
    what: str,
    interpreter: Interpreter = OWN_PYTHON,
) -> float:
    """Run a measuring worker and return the one number its `kind` event carries."""
    return float(_measured_event(request, work_dir, kind, what, interpreter=interpreter)[key])


def _measured_event(
    request: dict[str, Any],
    work_dir: Path,
    kind: str,
    what: str,
    timeout_s: float | None = None,
    interpreter: Interpreter = OWN_PYTHON,
) -> dict[str, Any]:
    """Run a measuring worker and return its `kind` event; past `timeout_s` it is killed."""
    done = spawn_worker(request, work_dir, lambda event: None, timeout_s, interpreter)
    found = [e for e in done.events if e["type"] == kind]
    if found:
        return found[0]
    if done.timed_out:
        reason = f"ran past {timeout_s:g} s and was killed"
    else:
        reason = done.error or _crash_message(done.code, work_dir / "worker.log")
    raise BenchError(f"measuring {what} failed: {reason}")


def _crash_message(code: int, log_path: Path) -> str:
    """Why a worker died without saying so itself: its exit, and the exception line of the
    last traceback in its log (CUDA errors end with hints, not with what went wrong)."""
    how = f"killed by signal {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    return f"worker {how}: {exception_line(text)[:300]}"


def _signal_name(number: int) -> str:
    """`9 (SIGKILL)`: the number as the exit status shows it, and what it means."""
    try:
        return f"{number} ({signal.Signals(number).name})"
    except ValueError:
        return str(number)


def exception_line(log: str) -> str:
    """The line that names a traceback's exception (`RuntimeError: CUDA error: ...`): the
    first unindented line after the last `Traceback` header; else the last non-empty line."""
    lines = [line for line in log.splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    if starts:
        after = [line for line in lines[starts[-1] + 1 :] if not line.startswith((" ", "\t"))]
        if after:
            return after[0].strip()
    return lines[-1].strip() if lines else "no output"


class CellObserver(Protocol):
    """Progress display and recording hooks around each cell."""

    def cell_started(self, index: int, total: int, cell: Cell) -> None: ...
    def epoch(self, cell: Cell, record: EpochRecord, epochs: int) -> None: ...
    def cell_finished(self, run: CellRun) -> None: ...


class CellTracker(Protocol):
    def start_cell(self, cell: Cell, start_ms: int | None = None) -> str: ...
    def log_epoch(self, run_id: str, record: EpochRecord) -> None: ...
    def finish_cell(self, run_id: str, run: CellRun) -> None: ...
    def end(self, run_id: str, status: str) -> None: ...


class _PhaseClock:
    """Seconds spent per named phase around a cell, measured in the parent process."""

    def __init__(self) -> None:
        self.started_at = time.perf_counter()
        self.seconds: dict[str, float] = {"mlflow_logging": 0.0, "display": 0.0}

    @contextlib.contextmanager
    def timing(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - start

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time that is no part of the cell (the canary after it): `started_at` moves on by
        as much, so the cell's total and its harness share leave it out."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.started_at += time.perf_counter() - start


@runtime_checkable
class ClusterExecutor(Protocol):
    """An executor that runs many cells at once on other machines (Ray): it yields each
    cell's run as it finishes, and cancels what is still out when closed early."""

    def run_cells(
        self,
        cells: list[Cell],
        options: Options,
        stage_texts: Mapping[str, str],
        time_limit: Callable[[Cell], float],
        measure_peaks: bool,
    ) -> Iterator[CellRun]: ...

    def node_peaks(self) -> dict[NodePeak, float]: ...

    def describe(self) -> str: ...

    def close(self) -> None: ...


def run_matrix(
    cells: list[Cell],
    options: Options,
    executor: Executor | ClusterExecutor,
    tracker: CellTracker,
    observer: CellObserver,
    epochs_of: Callable[[Cell], int],
    stage_texts: Mapping[str, str] | None = None,
    cell_timeout_s: int | None = None,
    figures: Callable[[CellRun], dict[str, float]] = lambda run: {},
    measure_peaks: bool = False,
) -> list[CellRun]:
    """Run every cell; record each in MLflow; end each run with its true status.
    `stage_texts` (stage -> its text, read once at planning) is what each worker trains from;
    without it a worker reads the stage from the stages folder. A cell running past
    `cell_timeout_s` (default: `cell_time_limit` of its epochs) is killed and FAILED. Locally,
    cells run in order, one at a time, and a canary before and after each cell and other
    processes' CPU use during it judge whether its speed can be trusted (`CellRun.load`; ~0.6 s
    a cell, outside its time). On a cluster they run at once and each is recorded as it
    comes back, its node's peak measured on that node (`measure_peaks`). `figures` derives a
    finished cell's speed figures (`CellRun.speed`) before it is recorded."""

    def time_limit(cell: Cell) -> int:
        return cell_timeout_s or cell_time_limit(epochs_of(cell))

    texts = stage_texts or {}
    if isinstance(executor, ClusterExecutor):
        finished = executor.run_cells(cells, options, texts, time_limit, measure_peaks)
        try:
            runs = [
                _record_finished(run, index, len(cells), tracker, observer, figures)
                for index, run in enumerate(finished, start=1)
            ]
        finally:
            finished.close()  # type: ignore[attr-defined]  # a generator: cancels what is out
        order = {cell: position for position, cell in enumerate(cells)}
        return sorted(runs, key=lambda run: order[run.cell])
    runs = []
    for index, cell in enumerate(cells, start=1):
        watch = load_monitor.watch_before()
        clock = _PhaseClock()
        with clock.timing("display"):
            observer.cell_started(index, len(cells), cell)
        with clock.timing("mlflow_logging"):
            run_id = tracker.start_cell(cell)
        with (
            _ended_on_error(tracker, run_id),
            tempfile.TemporaryDirectory(prefix="mlp-bench-") as tmp,
        ):

            def on_epoch(
                record: EpochRecord,
                cell: Cell = cell,
                run_id: str = run_id,
                clock: _PhaseClock = clock,
            ) -> None:
                with clock.timing("mlflow_logging"):
                    tracker.log_epoch(run_id, record)
                with clock.timing("display"):
                    observer.epoch(cell, record, epochs_of(cell))

            run = executor.execute(
                cell, options, Path(tmp), on_epoch, texts.get(cell.stage), time_limit(cell)
            )
            if run.result is not None:
                with clock.paused():
                    run.load = load_monitor.watch_after(watch, run.result.spread)
            run.timings["started_at"] = clock.started_at
            _finish(run, run_id, clock, tracker, figures)
        observer.cell_finished(run)
        runs.append(run)
    return runs


@contextlib.contextmanager
def _ended_on_error(tracker: CellTracker, run_id: str) -> Iterator[None]:
    """Interrupted: the cell's run ends KILLED; the recording broke: FAILED."""
    try:
        yield
    except BaseException as exc:
        tracker.end(run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise


def _finish(
    run: CellRun,
    run_id: str,
    clock: _PhaseClock,
    tracker: CellTracker,
    figures: Callable[[CellRun], dict[str, float]],
) -> None:
    """The parent-side timings and speed figures, then the cell's records and its end."""
    run.timings.update(clock.seconds)
    if run.result is not None:
        run.speed = figures(run)
    tracker.finish_cell(run_id, run)


def _record_finished(
    run: CellRun,
    index: int,
    total: int,
    tracker: CellTracker,
    observer: CellObserver,
    figures: Callable[[CellRun], dict[str, float]],
) -> CellRun:
    """A cell that came back from a cluster: its run is made now (none waits RUNNING while
    the cell is queued), its epochs written in one go, then its end."""
    clock = _PhaseClock()
    with clock.timing("display"):
        observer.cell_started(index, total, run.cell)
    # When the cell started on its node, on this clock: its run's start time.
    started = time.time() - (time.perf_counter() - run.timings["started_at"])
    with clock.timing("mlflow_logging"):
        run_id = tracker.start_cell(run.cell, start_ms=int(1000 * started))
    with _ended_on_error(tracker, run_id):
        for record in run.result.epochs if run.result is not None else []:
            with clock.timing("mlflow_logging"):
                tracker.log_epoch(run_id, record)
        _finish(run, run_id, clock, tracker, figures)
    observer.cell_finished(run)
    return run
