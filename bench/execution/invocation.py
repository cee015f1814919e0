"""One invocation of the matrix (run, perf): the validated plan, the parent run, the peaks,
the cells, and the parent's end. Knows no command line: `bench.commands.planning` builds the
Plan from the arguments, and nothing past it reads them."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from backends import installed_backends
from bench.core.cpu_activity import Activity
from bench.core.errors import BenchError
from bench.core.options import Options
from bench.core.program import PROGRAM
from bench.core.seeding import describe_seeds
from bench.core.spec import StageSpec
from bench.core.types import Cell, CellRun
from bench.execution import load_monitor
from bench.execution.environments import Environment, environment_record
from bench.execution.matrix import (
    OWN_PYTHON,
    ClusterExecutor,
    Interpreter,
    LocalExecutor,
    NodePeak,
    run_matrix,
)
from bench.execution.peaks import peak_uses_tf32
from bench.recording import views
from bench.recording.links import closing_lines
from bench.recording.resume_plan import (
    PLAN_DIGEST,
    RecordedInvocation,
    load_invocation,
    plan_digest,
)
from bench.recording.run_report import report_safely
from bench.recording.speed import machine_peaks, speed_figures, step_products
from bench.recording.stats import group_metrics
from bench.recording.tables import Progress
from bench.recording.tracking import MatrixRecord, RunStatus, Tracker


@dataclass(frozen=True)
class Plan:
    """A validated `run` invocation: everything known before any training starts."""

    cells: list[Cell]
    specs: dict[str, StageSpec]
    options: Options
    tracking_uri: str
    experiment: str
    seeds: list[int] = field(default_factory=lambda: [0])
    # What else ran on the machine just before, and why it counts as busy (None: quiet).
    machine: Activity | None = None
    busy: str | None = None
    measure_peaks: bool = True  # --no-peak: False
    cell_timeout_s: int | None = None  # None: the matrix's default for the cell's epochs
    tags: dict[str, str] = field(default_factory=dict)  # the user's --tag labels
    command: str = ""  # the command line, as recorded on the parent run
    # Where the cells run: None, this machine one at a time; else a cluster (--executor ray),
    # already joined and checked at planning.
    cluster: ClusterExecutor | None = None
    # `run --resume`: the invocation whose unfinished cells these are (None: a new one).
    resumed: RecordedInvocation | None = None
    # The environment (venv) each cell's process runs in: `--env`, `upgrade`; None: this one.
    environment: Environment | None = None

    @property
    def interpreter(self) -> Interpreter:
        if self.environment is None:
            return OWN_PYTHON
        return Interpreter(str(self.environment.python))

    @property
    def environment_tags(self) -> dict[str, str]:
        """What names the environment, on the parent run and on every cell's."""
        return self.environment.tags() if self.environment is not None else {}


def check_machine(refuse_busy: bool) -> tuple[Activity, str | None]:
    """Before any peak or cell (and before the store is written): are the cores free? A
    second process on 2 cores made the torch cells 5-17x slower."""
    activity = load_monitor.probe_activity()
    reason = load_monitor.busy_reason(activity, os.cpu_count() or 1)
    if reason is not None and refuse_busy:
        raise BenchError(
            f"the machine is busy, so timings would be wrong: {reason} or pass --allow-busy"
        )
    if reason is not None:
        print(f"WARNING: the machine is busy, so timings will be wrong: {reason}", flush=True)
    return activity, reason


def _machine_metrics(plan: Plan) -> dict[str, float]:
    """The probe taken at planning, as the parent run's metrics (where measured)."""
    if plan.machine is None:
        return {}
    values = {
        "others_cpu_cores_at_start": plan.machine.others_cores,
        "steal_fraction_at_start": plan.machine.steal_fraction,
        "load_average_1m_at_start": plan.machine.load1,
    }
    return {k: v for k, v in values.items() if v is not None}


def invocation_name(kind: str, plan: Plan) -> str:
    """The parent run's name: when, then the command and what it ran. The UI lists parents by
    name and cuts it at about 20 characters: the time first tells two invocations of one command
    apart ("matrix-20261129-2317" said neither what nor which)."""
    command = "run" if kind == "matrix" else kind
    stages = ",".join(plan.specs) if len(plan.specs) <= 2 else f"{len(plan.specs)} stages"
    backends = ",".join(dict.fromkeys(c.backend for c in plan.cells))
    devices = ",".join(dict.fromkeys(c.device for c in plan.cells))
    where = f" | env {plan.environment.name}" if plan.environment is not None else ""
    return (
        f"{time.strftime('%m-%d %H:%M:%S')} {command} {stages} | {backends} | {devices}"
        f" | seeds {describe_seeds(plan.seeds)}{where}"
    )


def _invocation_params(plan: Plan) -> dict[str, str]:
    return {
        "stages": ",".join(plan.specs),
        "cells": str(len(plan.cells)),
        "seeds": describe_seeds(plan.seeds),
        "epochs": str(plan.options.epochs or "stage file"),
        "data_dir": plan.options.data_dir,
        "command": plan.command[:500],
        # What `run --resume` checks invocation.json against: it is an artifact, editable.
        PLAN_DIGEST: plan_digest(invocation_plan(plan)),
        **plan.options.record(),
    }


def measure_peaks(
    cells: list[Cell],
    options: Options,
    when: str = "",
    interpreter: Interpreter = OWN_PYTHON,
) -> dict[tuple[str, str], float]:
    """The peak matmul rate through every installed framework on each device of the cells,
    once: float32, or TF32 where the cells may use it. The cells' own backends must measure;
    another installed framework only widens the machine's peak (perf.machine_peaks), so one
    that cannot use the device is left out with a note. In another environment, only the
    cells' own frameworks: what this process has installed says nothing of that venv."""
    peaks: dict[tuple[str, str], float] = {}
    ran = {(c.backend, c.device) for c in cells}
    devices = dict.fromkeys(c.device for c in cells)
    others = installed_backends() if interpreter.own else []
    backends = dict.fromkeys([c.backend for c in cells] + others)
    for device in devices:
        for backend in backends:
            tf32 = peak_uses_tf32(device, options)
            try:
                with tempfile.TemporaryDirectory(prefix="mlp-bench-peak-") as tmp:
                    peaks[(backend, device)] = LocalExecutor(interpreter).peak(
                        backend, device, options, Path(tmp)
                    )
            except BenchError as error:
                if (backend, device) in ran:
                    raise
                print(f"peak{when}, {backend}/{device}: not measured ({error})", flush=True)
                continue
            print(
                f"peak {'TF32' if tf32 else 'float32'} matmul{when}, {backend}/{device}: "
                f"{peaks[(backend, device)]:,.0f} GFLOP/s",
                flush=True,
            )
    return peaks


def measure_attainable(plan: Plan, when: str = "") -> dict[tuple[str, str, str], float]:
    """Per (backend, device, stage) of the cells: the seconds a step of the stage's products
    takes on that backend and device, the products alone, computed as its cells compute them
    (one process each backend and device; stages of one shape share a figure). The limit no
    step can beat is a figure beside the cells', so a failure to measure it is a note."""
    stages = dict.fromkeys(c.stage for c in plan.cells)
    products = {stage: step_products(plan.specs[stage]) for stage in stages}
    distinct = list(dict.fromkeys(tuple(p) for p in products.values()))
    attainable: dict[tuple[str, str, str], float] = {}
    for backend, device in dict.fromkeys((c.backend, c.device) for c in plan.cells):
        try:
            with tempfile.TemporaryDirectory(prefix="mlp-bench-attainable-") as tmp:
                seconds = LocalExecutor(plan.interpreter).attainable(
                    backend, device, plan.options, [list(p) for p in distinct], Path(tmp)
                )
        except BenchError as error:
            print(f"attainable{when}, {backend}/{device}: not measured ({error})", flush=True)
            continue
        for stage in stages:
            step = seconds[distinct.index(tuple(products[stage]))]
            attainable[(backend, device, stage)] = step
        for stage_products, step in zip(distinct, seconds, strict=True):
            batch = stage_products[0].m
            print(
                f"attainable{when}, {backend}/{device}: {batch / step:,.0f} samples/s (the step's"
                f" {len(stage_products)} products alone, {step * 1e6:,.0f} us a step)",
                flush=True,
            )
    return attainable


def peak_records(peaks: dict[tuple[str, str], float]) -> tuple[dict[str, float], dict[str, str]]:
    """The parent run's peak metrics (each framework's and the machine's per device) and the
    tags that name each machine peak's source."""
    metrics = {f"peak_gflops_{b}_{d}": v for (b, d), v in peaks.items()}
    best = machine_peaks(peaks)
    metrics |= {f"machine_peak_gflops_{d}": v for d, (v, _) in best.items()}
    return metrics, {f"machine_peak_source_{d}": source for d, (_, source) in best.items()}


def invocation_plan(plan: Plan) -> dict[str, object]:
    """What `run --resume` needs to run the rest of an invocation as it was planned: its cells,
    options and stage texts (recorded on the parent run as invocation.json)."""
    return {
        "cells": [dataclasses.asdict(cell) for cell in plan.cells],
        "options": dataclasses.asdict(plan.options),
        "stage_texts": {name: spec.text for name, spec in plan.specs.items()},
        "seeds": plan.seeds,
        "measure_peaks": plan.measure_peaks,
        "cell_timeout_s": plan.cell_timeout_s,
        # Only where there is one, so that the plans recorded before environments keep their
        # digest.
        **({"environment": environment_record(plan.environment)} if plan.environment else {}),
    }


def node_peak_metrics(node_peaks: dict[NodePeak, float]) -> dict[str, float]:
    """Each node's peaks on the parent run: `node_peak_gflops/NODE_ID/BACKEND_DEVICE`."""
    return {
        f"node_peak_gflops/{node[:16]}/{backend}_{device}": gflops
        for (node, backend, device), gflops in node_peaks.items()
    }


@dataclass
class Execution:
    """A finished (or interrupted) invocation: its runs and where they are recorded."""

    tracker: Tracker
    parent_id: str
    runs: list[CellRun]
    peaks: dict[tuple[str, str], float]
    interrupted: bool
    # No cell's speed flagged and the machine quiet at the start (perf adds the peaks' drift).
    speed_stable: bool = True
    # (backend, device, stage) -> a step's products alone, seconds (measure_attainable)
    attainable: dict[tuple[str, str, str], float] = field(default_factory=dict)


@dataclass
class Opened:
    """An invocation whose parent run is open: cells can be run into it, then it is closed."""

    plan: Plan
    tracker: Tracker
    parent_id: str
    record: MatrixRecord
    peaks: dict[tuple[str, str], float] = field(default_factory=dict)
    # (backend, device, stage) -> seconds a step of its products takes alone (measure_attainable)
    attainable: dict[tuple[str, str, str], float] = field(default_factory=dict)
    runs: list[CellRun] = field(default_factory=list)


def open_invocation(plan: Plan, kind: str) -> Opened:
    """Open the store and the parent run (a resumed one: reclaimed), and its cells' record."""
    from bench.core.provenance import git_state

    tracker = Tracker(plan.tracking_uri, plan.experiment)
    if plan.resumed is not None:
        parent_id = plan.resumed.parent_id
        # Before the try: a claim lost to another process leaves its runs alone.
        tracker.claim_resume(plan.resumed)
    else:
        parent_id = tracker.start_parent(
            invocation_name(kind, plan),
            params=_invocation_params(plan),
            # The user's --tag labels first: the harness's own tags (validated apart) after.
            tags={
                **plan.tags,
                "kind": kind,
                "machine_busy": str(plan.busy is not None).lower(),
                **plan.environment_tags,
                **git_state(),
            },
        )
    try:
        # First: its close() ends the groups that reopen() makes RUNNING, should anything fail.
        record = MatrixRecord(
            tracker,
            parent_id,
            plan.specs,
            plan.cells,
            plan.options,
            plan.resumed,
            cell_tags=plan.environment_tags,
        )
    except BaseException as exc:
        tracker.end(parent_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    return Opened(plan, tracker, parent_id, record)


def prepare(opened: Opened) -> None:
    """Before the first cell: the plan (or the reopened runs), the machine and the peaks."""
    plan, tracker, parent_id = opened.plan, opened.tracker, opened.parent_id
    if plan.resumed is None:
        tracker.log_invocation(parent_id, invocation_plan(plan))
    else:
        tracker.reopen(plan.resumed, plan.cells)
    print(
        f"{len(plan.cells)} cells -> {tracker.shown_uri} (experiment {plan.experiment!r})",
        flush=True,
    )
    if plan.cluster is not None:
        print(plan.cluster.describe(), flush=True)
    tracker.log_metrics(parent_id, _machine_metrics(plan))
    # On a cluster each node measures its own peak, before its first cell.
    if plan.measure_peaks and plan.cluster is None:
        opened.peaks = measure_peaks(plan.cells, plan.options, interpreter=plan.interpreter)
        opened.attainable = measure_attainable(plan)
    peak_metrics, peak_sources = peak_records(opened.peaks)
    tracker.log_metrics(parent_id, peak_metrics)
    tracker.set_tags(parent_id, peak_sources)


@contextlib.contextmanager
def ended_on_error(*invocations: Opened) -> Iterator[None]:
    """Interrupted: every open invocation's runs end KILLED, and the error goes on up; any
    other failure: FAILED."""
    try:
        yield
    except BaseException as exc:
        status: RunStatus = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        for opened in invocations:
            opened.record.close(status)
            opened.tracker.end(opened.parent_id, status)
        raise


def run_cells(opened: Opened, cells: list[Cell], progress: Progress | None = None) -> list[CellRun]:
    """Run `cells` (of the plan) into the open invocation, each recorded as it finishes."""
    plan = opened.plan
    runs = run_matrix(
        cells,
        plan.options,
        plan.cluster or LocalExecutor(plan.interpreter),
        opened.record,
        progress or Progress(),
        epochs_of=lambda cell: plan.specs[cell.stage].training.epochs,
        stage_texts={name: spec.text for name, spec in plan.specs.items()},
        cell_timeout_s=plan.cell_timeout_s,
        figures=functools.partial(
            speed_figures, specs=plan.specs, peaks=opened.peaks, attainable=opened.attainable
        ),
        measure_peaks=plan.measure_peaks,
    )
    opened.runs += runs
    return runs


def close_invocation(opened: Opened) -> Execution:
    """The parent's cell counts and speed flag; the parent run stays open (see `finish`)."""
    plan, tracker, parent_id, runs = opened.plan, opened.tracker, opened.parent_id, opened.runs
    if plan.cluster is not None:
        tracker.log_metrics(parent_id, node_peak_metrics(plan.cluster.node_peaks()))
    for line in load_monitor.canary_failure_lines(runs):
        print(line, flush=True)
    failed = sum(run.result is None for run in runs)
    planned = len(plan.resumed.cells) if plan.resumed is not None else len(runs)
    tracker.log_metrics(parent_id, {"cells": planned, "cells_failed": failed})
    stable = plan.busy is None and all(r.load is None or r.load.stable for r in runs)
    tracker.set_tags(parent_id, {"speed_stable": str(stable).lower()})
    return Execution(
        tracker,
        parent_id,
        runs,
        opened.peaks,
        interrupted=False,
        speed_stable=stable,
        attainable=opened.attainable,
    )


INTERRUPTED = "\ninterrupted: the runs so far are recorded; the interrupted one is KILLED"


def execute(plan: Plan, kind: str) -> Execution:
    """Open the store, measure the peaks, run the matrix; the parent run stays open."""
    try:
        opened = open_invocation(plan, kind)
        try:
            with ended_on_error(opened):
                prepare(opened)
                run_cells(opened, plan.cells)
                return close_invocation(opened)
        except KeyboardInterrupt:
            print(INTERRUPTED)
            return Execution(opened.tracker, opened.parent_id, [], {}, interrupted=True)
    finally:
        if plan.cluster is not None:
            plan.cluster.close()


class _Interleaved(Progress):
    """Numbers the cells of interleaved invocations as one sequence, each line naming the
    environment it ran in."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.total = total
        self.done = 0
        self.label = ""

    def cell_started(self, index: int, total: int, cell: Cell) -> None:
        self.done += 1
        super().cell_started(self.done, self.total, cell)

    def prefix(self, index: int, total: int, cell: Cell) -> str:
        return f"{super().prefix(index, total, cell)} [{self.label}]"


def execute_interleaved(plans: list[Plan], kind: str) -> list[Execution]:
    """The same cells in each plan's environment, one parent run each, cell by cell: each cell
    in every environment before the next cell, the order reversed every other cell (ABBA), so a
    slow phase of the host or a drift over the hours falls on both sides alike. The parent runs
    stay open (see `finish`)."""
    opened: list[Opened] = []
    progress = _Interleaved(sum(len(plan.cells) for plan in plans))
    try:
        try:
            for plan in plans:
                with ended_on_error(*opened):  # a side that fails to open ends those opened
                    opened.append(open_invocation(plan, kind))
            with ended_on_error(*opened):
                for side in opened:
                    prepare(side)
                for index, cell in enumerate(plans[0].cells):
                    for side in opened if index % 2 == 0 else opened[::-1]:
                        environment = side.plan.environment
                        progress.label = environment.name if environment else "this venv"
                        run_cells(side, [cell], progress)
                return [close_invocation(side) for side in opened]
        except KeyboardInterrupt:
            print(INTERRUPTED)
            return [
                Execution(side.tracker, side.parent_id, [], {}, interrupted=True) for side in opened
            ]
    finally:
        for plan in plans:
            if plan.cluster is not None:
                plan.cluster.close()


def finish(execution: Execution, plan: Plan) -> bool:
    """End the parent run with its true status, and say where it is; True if a cell failed."""
    failed = any(run.result is None for run in execution.runs)
    execution.tracker.end(execution.parent_id, "FAILED" if failed else "FINISHED")
    # After the end, so the report states the run's final status; a failure is one warning.
    report_safely(execution.tracker, execution.parent_id)
    print()
    experiment_id = execution.tracker.experiment_id
    view = views.saved(execution.tracker.reader, experiment_id, execution.parent_id)
    print("\n".join(closing_lines(plan.tracking_uri, experiment_id, execution.parent_id, view)))
    return failed


def end_recorded(tracker: Tracker, parent_id: str) -> str:
    """After `record-pending`: an invocation whose every cell now has a FINISHED run is ended
    as its own process would have ended it (its groups' statistics, the parent FINISHED, its
    report); otherwise nothing changes. Returns what was done, in a line."""
    try:
        recorded = load_invocation(tracker.reader, parent_id)
    except BenchError as error:  # still running, or recorded without its plan
        return f"invocation {parent_id} left as it is: {error}"
    unfinished = recorded.unfinished()
    if unfinished:
        return (
            f"invocation {parent_id}: {len(unfinished)} of its {len(recorded.cells)} cells did"
            f" not finish; run them with `{PROGRAM} run --resume {parent_id}`"
        )
    for group, run_id in recorded.group_ids.items():
        if tracker.reader.run(run_id, f"no group run {run_id}").status != "FINISHED":
            members = [m for cell, m in recorded.finished.items() if cell.group == group]
            tracker.log_metrics(run_id, group_metrics(members))
            tracker.end(run_id, "FINISHED")
    parent = tracker.reader.run(parent_id, f"no run {parent_id}")
    if parent.status == "FINISHED":
        return f"invocation {parent_id}: already FINISHED"
    if "cells" not in parent.metrics:  # the process ended before it logged them
        tracker.log_metrics(parent_id, {"cells": len(recorded.cells), "cells_failed": 0})
    tracker.end(parent_id, "FINISHED")
    report_safely(tracker, parent_id)  # after the end, as finish() does
    return f"invocation {parent_id}: all {len(recorded.cells)} cells recorded, FINISHED"
