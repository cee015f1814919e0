"""`python -m bench reproduce RUN_ID`: rerun a recorded cell; report what differs."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.commands.arguments import add_tracking_uri
from bench.commands.exits import EXIT_FAILED, EXIT_INTERRUPTED
from bench.core.data import ensure_data
from bench.core.errors import BenchError
from bench.core.options import Options
from bench.execution.matrix import LocalExecutor
from bench.execution.rerun import compare, recorded_spec, spec_differences
from bench.recording.tracking import Tracker, resolve_tracking_uri

NAME = "reproduce"
HELP = "rerun a recorded cell and compare"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", help="the MLflow run id of a cell")
    parser.add_argument("--data-dir", help="folder of the stage's data set files (MNIST's .gz)")
    add_tracking_uri(parser)


def run(args: argparse.Namespace) -> int:
    uri = resolve_tracking_uri(args.tracking_uri)
    tracker = Tracker(uri, experiment=None)
    recorded = tracker.reader.cell(args.run_id)
    assert recorded.stage_text is not None and recorded.step_losses is not None  # Reader.cell
    mismatched = spec_differences(recorded.stage_text, recorded.params, args.run_id)
    if mismatched:
        key, (param, artifact) = next(iter(mismatched.items()))
        raise BenchError(
            f"run {args.run_id}: param {key}={param} but its stage file says "
            f"{artifact}; the record is inconsistent"
        )
    data_dir = ensure_data(args.data_dir, [recorded_spec(recorded.stage_text, args.run_id).dataset])
    options = Options.from_record(recorded.params, str(data_dir))
    print(f"reproducing {recorded.cell.name} (run {args.run_id})", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="mlp-bench-") as tmp:
            run = LocalExecutor().execute(
                recorded.cell, options, Path(tmp), lambda r: None, stage_text=recorded.stage_text
            )
            if run.result is None:
                raise BenchError(f"the rerun failed: {run.error}")
            comparison = compare(
                recorded.step_losses, recorded.params, recorded.metrics["test_accuracy"], run.result
            )
            print(comparison.describe())
            run_id = tracker.record_reproduction(
                recorded, run, comparison.bit_identical, comparison.environment
            )
    except KeyboardInterrupt:
        print("\ninterrupted: nothing recorded")
        return EXIT_INTERRUPTED
    print(f"recorded as run {run_id}")
    return 0 if comparison.bit_identical else EXIT_FAILED
