"""Entry point of a cell's own process: `python -m bench.execution.worker REQUEST.json`.

Keeping each cell in its own process keeps the frameworks' thread pools and memory apart and each
timing clean. Events go to the parent as JSON lines on the original stdout; anything a library
prints is sent to stderr, which the parent keeps as the cell's log.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from bench.core.errors import BenchError
from bench.core.options import Options
from bench.core.spec import parse_stage
from bench.core.types import Cell, EpochRecord
from bench.execution.runner import run_cell

_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


def _event_stream() -> TextIO:
    # Keep the real stdout for events, and point fd 1 at stderr so stray prints cannot corrupt
    # the event stream.
    events = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return events


def _die_with_parent() -> None:
    """Ask Linux to end this worker if the parent dies, so no orphan keeps training."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the parent's own clean-up still ends the worker


def _emit(stream: TextIO, kind: str, **payload: Any) -> None:
    stream.write(json.dumps({"type": kind, **payload}) + "\n")


def _run_cell(request: dict[str, Any], events: TextIO) -> None:
    cell = Cell(**request["cell"])
    options = Options(**request["options"])
    out_dir = Path(request["out_dir"])

    def on_epoch(record: EpochRecord) -> None:
        _emit(events, "epoch", **record.__dict__)
        _log(
            f"epoch {record.epoch}: train loss {record.train_loss:.4f}, validation"
            f" {100 * record.val_accuracy:.2f}%, {record.epoch_seconds:.2f} s"
            f" ({record.steps} steps)"
        )

    text = request.get("stage_text")
    spec = parse_stage(text, f"recorded {cell.stage}.toml") if text else None
    _log(f"cell {cell.name}: {options.threads} threads, dtype {options.dtype}")
    result = run_cell(cell, options, on_epoch, spec)
    result.save_arrays(out_dir)
    (out_dir / "result.json").write_text(json.dumps(result.to_json()))
    speed = result.train_samples_per_s
    _log(
        f"result: {result.outcome}, test accuracy {100 * result.test_accuracy:.2f}%, "
        + (f"{speed:,.0f} samples/s (median of the epochs after the first)" if speed else "-")
        + (
            f", first non-finite loss at step {result.diverged_step}"
            if result.diverged_step
            else ""
        )
    )
    _emit(events, "result")


def _log(line: str) -> None:
    """A line of the cell's own progress in its log (worker.log, the process's stderr): what
    it trained and how far it got, beside anything the framework printed."""
    print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)


def _run_peak(request: dict[str, Any], events: TextIO) -> None:
    from bench.execution.peaks import measure_peak

    options = Options(**request["options"])
    _emit(events, "peak", gflops=measure_peak(request["backend"], request["device"], options))


def _run_attainable(request: dict[str, Any], events: TextIO) -> None:
    from bench.execution.peaks import measure_attainable

    options = Options(**request["options"])
    seconds = measure_attainable(
        request["backend"], request["device"], options, request["products"]
    )
    _emit(events, "attainable", seconds=seconds)


def _run_keras(request: dict[str, Any], events: TextIO) -> None:
    """Keras `model.fit` on one backend: this process's Keras, chosen before its import."""
    from backends.keras_reference import keras_fit_samples_per_s, keras_label
    from bench.core.data import load_dataset
    from bench.core.seeding import seeded_run
    from bench.core.spec import load_stage

    backend, device = request["backend"], request["device"]
    options = Options(**request["options"])
    spec = load_stage(request["stage"])
    splits = load_dataset(spec.dataset, Path(options.data_dir), download=False)
    run = seeded_run(spec, 0, splits.train_x.shape[0])
    _log(
        f"Keras reference {spec.name} on {keras_label(backend)} {device}: {options.threads} threads"
    )
    fit = keras_fit_samples_per_s(backend, spec, run, splits, options, device)
    _log(
        f"result: {fit.samples_per_s:,.0f} samples/s (median of the epochs after the first)"
        f" on {fit.ran_on}, keras {fit.keras_version} on {fit.keras_backend}"
    )
    _emit(events, "keras", **asdict(fit))


def main(request_path: str) -> int:
    _die_with_parent()
    events = _event_stream()
    _emit(events, "started", at=time.time())
    request = json.loads(Path(request_path).read_text())
    try:
        if request.get("mode") == "peak":
            _run_peak(request, events)
        elif request.get("mode") == "attainable":
            _run_attainable(request, events)
        elif request.get("mode") == "keras":
            _run_keras(request, events)
        else:
            _run_cell(request, events)
    except BenchError as exc:
        _emit(events, "error", message=str(exc))
        return 2
    except Exception as exc:  # a framework's error: the traceback to the log, its gist upward
        traceback.print_exc()
        _emit(events, "error", message=describe(exc))
        return 1
    return 0


def describe(exc: BaseException) -> str:
    """An exception on one line: its type and the first non-empty line of its message (CUDA
    errors put what went wrong first, then lines of hints)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


if __name__ == "__main__":
    code = main(sys.argv[1])
    sys.stdout.flush()
    sys.stderr.flush()
    # Results and events are written and flushed: skip interpreter and framework teardown,
    # which costs TensorFlow a few hundred ms per cell and measures nothing.
    os._exit(code)
