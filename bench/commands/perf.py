"""`python -m bench perf`: speed against the machine's limit, and against Keras `model.fit`.

Measures each device's peak matmul rate, runs the stages (30 epochs by default, so the
harness's share is measured on real cells), runs the Keras reference on the Keras backend of
each of the cells' frameworks, and prints and records a table: samples/s, GFLOP/s, roofline
fraction, ratio to Keras on the same framework, ratio to relu-xavier, overhead.
Then it measures the peaks again: one that moved under the run makes its figures suspect.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from backends.keras_measured import KerasFit
from backends.keras_reference import (
    KERAS_BACKENDS,
    keras_installed,
    keras_label,
    reference_backends,
)
from bench.commands.arguments import add_matrix, int_in
from bench.commands.exits import EXIT_FAILED, EXIT_INTERRUPTED
from bench.commands.planning import plan_run
from bench.core.errors import BenchError
from bench.core.spec import MAX_EPOCHS, load_stage
from bench.core.types import CellLoad, CellRun
from bench.execution import load_monitor
from bench.execution.invocation import (
    Execution,
    Plan,
    execute,
    finish,
    measure_attainable,
    measure_peaks,
)
from bench.execution.matrix import LocalExecutor
from bench.recording.speed import DRIFT_LIMIT, drift_lines, machine_peaks, roofline
from bench.recording.tables import speed_mark, table, with_speed_note

NAME = "perf"
HELP = "throughput vs the peak and vs Keras model.fit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_matrix(parser)
    parser.add_argument(
        "--keras-epochs",
        type=_keras_epochs,
        default=4,
        help="epochs of the Keras model.fit reference on each framework's Keras backend"
        " (0: skip it; else 2 or more); default 4",
    )
    parser.add_argument(
        "--allow-busy",
        action="store_true",
        help="time even where other processes use the cores (the cells are flagged)",
    )


def _keras_epochs(text: str) -> int:
    """--keras-epochs: 0 (no reference) or 2 and more, since the reference's speed is the
    median of the epochs after the first (the first compiles and warms up)."""
    value = int_in(0, MAX_EPOCHS)(text)
    if value == 1:
        raise argparse.ArgumentTypeError(
            "1 leaves no epoch after the first, whose median is the reference's speed;"
            " give 2 or more, or 0 to skip the reference"
        )
    return value


REFERENCE_STAGE = "relu-xavier"
ATTAINABLE_NOTE = (
    "attainable: the samples/s of a step that computed its products alone (each stage's own"
    " shapes, through the cell's own library and compiler); of attainable: the cell against it"
)
KERAS_NOTE = (
    "x Keras fit: against Keras model.fit on the cell's own framework and device (the keras/*"
    f" rows, {REFERENCE_STAGE})"
)


@dataclass(frozen=True)
class KerasReference:
    """Keras `model.fit` on one framework's Keras backend and one device: what it measured,
    or why it measured nothing."""

    backend: str  # the harness's backend whose framework Keras ran on
    device: str
    fit: KerasFit | None = None
    error: str | None = None
    speed: dict[str, float] = field(default_factory=dict)  # GFLOP/s, roofline fractions
    # The machine around it, watched as a cell's is: its ratios are only as sound as it is.
    load: CellLoad | None = None

    @property
    def name(self) -> str:
        return f"{keras_label(self.backend)}/{self.device}"


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _speed_columns(samples_per_s: str, speed: dict[str, float]) -> list[str]:
    """samples/s, GFLOP/s, roofline, own peak, attainable, of attainable."""
    gflops = speed.get("train_gflops")
    limit = speed.get("attainable_samples_per_s")
    return [
        samples_per_s,
        "-" if gflops is None else f"{gflops:,.1f}",
        _fraction(speed.get("roofline_fraction")),
        _fraction(speed.get("framework_roofline_fraction")),
        "-" if limit is None else f"{limit:,.0f}",
        _fraction(speed.get("attainable_fraction")),
    ]


def _reference_row(reference: KerasReference) -> list[str]:
    """A Keras reference's own row: its speed; a ratio to itself says nothing."""
    fit, load = reference.fit, reference.load
    mark = "!" if load is not None and not load.stable else ""
    rate = "-" if fit is None else f"{fit.samples_per_s:,.0f}{mark}"
    where = [REFERENCE_STAGE, keras_label(reference.backend), reference.device]
    return [*where, *_speed_columns(rate, reference.speed), "-", "-", "-"]


def perf_table(runs: list[CellRun], references: list[KerasReference]) -> str:
    """Each cell against the Keras reference of its own framework on its device ("x Keras
    fit"), then a row per reference. "roofline" is against the machine's peak (the best any
    installed framework reached), "own peak" against the cell's framework's own."""
    header = [
        "stage",
        "backend",
        "device",
        "samples/s",
        "GFLOP/s",
        "roofline",
        "own peak",
        "attainable",
        "of attainable",
        "x Keras fit",
        "vs relu-xavier",
        "harness share",
    ]
    base = {
        (r.cell.backend, r.cell.device): r.result.train_samples_per_s
        for r in runs
        if r.result is not None and r.cell.stage == REFERENCE_STAGE
    }
    fits = {(r.backend, r.device): r.fit.samples_per_s for r in references if r.fit}
    rows = []
    for run in runs:
        c, result = run.cell, run.result
        if result is None or result.train_samples_per_s is None:
            rows.append([c.stage, c.backend, c.device] + ["-"] * (len(header) - 3))
            continue
        speed = result.train_samples_per_s
        own_base = base.get((c.backend, c.device))
        fit = fits.get((c.backend, c.device))
        rows.append(
            [
                c.stage,
                c.backend,
                c.device,
                *_speed_columns(f"{speed:,.0f}{speed_mark(run)}", run.speed),
                f"{speed / fit:.2f}" if fit else "-",
                f"{speed / own_base:.2f}" if own_base else "-",
                f"{100 * run.speed.get('harness_fraction', 0):.2f}%",
            ]
        )
    rows += [_reference_row(reference) for reference in references]
    text = table(header, rows) + f"\n{ATTAINABLE_NOTE}" + (f"\n{KERAS_NOTE}" if references else "")
    return with_speed_note(text, runs, [(r.name, r.load) for r in references])


def _limit_rates(attainable: dict[tuple[str, str, str], float]) -> dict[tuple[str, str], float]:
    """Per backend and device, the steps a second of its first stage's products alone."""
    rates: dict[tuple[str, str], float] = {}
    for (backend, device, _), seconds in attainable.items():
        rates.setdefault((backend, device), 1.0 / seconds)
    return rates


def _check_drift(execution: Execution, plan: Plan) -> list[str]:
    """Measure the peaks and the attainable limits again, record how far they moved, and
    return the report's lines: a limit measured in a slow phase of the host would flatter
    every cell's fraction of it."""
    end = measure_peaks(plan.cells, plan.options, when=" at the end")
    drift, lines = drift_lines(execution.peaks, end)
    metrics = {f"peak_gflops_end_{b}_{d}": v for (b, d), v in end.items()}
    metrics |= {f"peak_drift_{k.replace('/', '_')}": v for k, v in drift.items()}
    if execution.attainable:
        start_rates = _limit_rates(execution.attainable)
        end_rates = _limit_rates(measure_attainable(plan, when=" at the end"))
        moved, more = drift_lines(start_rates, end_rates, what="attainable limit")
        metrics |= {f"attainable_drift_{k.replace('/', '_')}": v for k, v in moved.items()}
        drift |= {f"attainable {k}": v for k, v in moved.items()}
        lines += more
    execution.tracker.log_metrics(execution.parent_id, metrics)
    # Combined with the cells' verdicts and the start's probe: a false is never made true.
    stable = execution.speed_stable and all(abs(v) <= DRIFT_LIMIT for v in drift.values())
    execution.tracker.set_tags(execution.parent_id, {"speed_stable": str(stable).lower()})
    return lines


def _keras(plan: Plan, epochs: int, backend: str, device: str) -> KerasReference:
    """One Keras reference; a failure is one line and a reference without a figure, so the
    other backends' references and the table still come."""
    label = f"{keras_label(backend)} {device}"
    watch = load_monitor.watch_before()
    try:
        with tempfile.TemporaryDirectory(prefix="mlp-bench-keras-") as tmp:
            fit = LocalExecutor().keras_reference(
                backend, REFERENCE_STAGE, plan.options, epochs, device, Path(tmp)
            )
    except BenchError as error:
        print(f"WARNING: {error}; the table shows - for it", flush=True)
        return KerasReference(backend, device, error=str(error))
    load = load_monitor.watch_after(watch, {})
    print(
        f"Keras model.fit reference, {REFERENCE_STAGE} on {label} (keras {fit.keras_version},"
        f" ran on {fit.ran_on}): {fit.samples_per_s:,.0f} samples/s",
        flush=True,
    )
    return KerasReference(backend, device, fit, load=load)


def keras_references(plan: Plan, epochs: int) -> list[KerasReference]:
    """Keras `model.fit` on each device of the cells, on the Keras backend of each of the
    cells' frameworks that has one: a reference without a cell of its framework to compare
    would cost its time (a process, an import, the epochs) and compare nothing."""
    if not keras_installed():
        print("WARNING: no Keras model.fit reference: keras is not installed (pip install keras)")
        return []
    backends = reference_backends(dict.fromkeys(c.backend for c in plan.cells))
    devices = dict.fromkeys(c.device for c in plan.cells)
    return [_keras(plan, epochs, b, d) for d in devices for b in backends]


def with_roofline(
    reference: KerasReference, plan: Plan, peaks: dict[tuple[str, str], float]
) -> KerasReference:
    """The reference's GFLOP/s and roofline fractions, computed as the cells' are."""
    if reference.fit is None:
        return reference
    spec = plan.specs.get(REFERENCE_STAGE) or load_stage(REFERENCE_STAGE)
    machine = machine_peaks(peaks).get(reference.device)
    own = peaks.get((reference.backend, reference.device))
    speed = roofline(reference.fit.samples_per_s, spec, machine[0] if machine else None, own)
    return replace(reference, speed=speed)


def reference_records(
    references: list[KerasReference],
) -> tuple[dict[str, float], dict[str, str]]:
    """The parent run's metrics (`keras_fit_samples_per_s_{backend}_{device}`) and tags (what
    each reference ran on, or why it failed). TensorFlow's also keeps its name from before
    Keras ran on every backend, `keras_fit_samples_per_s_{device}`, which tooling reads."""
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for reference in references:
        where = f"{KERAS_BACKENDS[reference.backend]}_{reference.device}"
        if reference.fit is None:
            tags[f"keras_fit_error_{where}"] = (reference.error or "failed")[:500]
            continue
        metrics[f"keras_fit_samples_per_s_{where}"] = reference.fit.samples_per_s
        if reference.load is not None:
            tags |= {f"keras_fit_{k}_{where}": v for k, v in reference.load.tags().items()}
        if reference.backend == "tensorflow":
            metrics[f"keras_fit_samples_per_s_{reference.device}"] = reference.fit.samples_per_s
        for name, value in asdict(reference.fit).items():
            if name != "samples_per_s":
                text = str(value).lower() if isinstance(value, bool) else str(value)
                tags[f"keras_fit_{name}_{where}"] = text
    return metrics, tags


def _table(execution: Execution, plan: Plan, keras_epochs: int) -> str:
    """The Keras references, the table and the peaks' drift, recorded on the parent run."""
    references: list[KerasReference] = []
    if keras_epochs:
        references = [
            with_roofline(r, plan, execution.peaks) for r in keras_references(plan, keras_epochs)
        ]
        metrics, tags = reference_records(references)
        execution.tracker.log_metrics(execution.parent_id, metrics)
        execution.tracker.set_tags(execution.parent_id, tags)
    text = perf_table(execution.runs, references)
    if execution.peaks:  # measured at the start unless --no-peak
        text += "\n\n" + "\n".join(_check_drift(execution, plan))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "perf_table.txt"
        path.write_text(text + "\n")
        execution.tracker.log_artifact(execution.parent_id, path)
    return text


def run(args: argparse.Namespace) -> int:
    plan = plan_run(args, refuse_busy=not args.allow_busy)
    execution = execute(plan, "perf")
    if execution.interrupted:
        return EXIT_INTERRUPTED
    try:
        text = _table(execution, plan, args.keras_epochs)
    except KeyboardInterrupt:
        execution.tracker.end(execution.parent_id, "KILLED")
        print("\ninterrupted: the cells are recorded, the perf table is not")
        return EXIT_INTERRUPTED
    except BaseException:  # a failed Keras reference or peak: the parent run must not stay open
        execution.tracker.end(execution.parent_id, "FAILED")
        raise
    print()
    print(text)
    return EXIT_FAILED if finish(execution, plan) else 0
