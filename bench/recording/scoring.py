"""A cell scored against the tutorial: its gap to the tutorial's accuracy and whether its
stage's expectation was met, as recorded (the tag expectation_met) and as the tables show it."""

from __future__ import annotations

from bench.core.spec import StageSpec
from bench.core.types import CellResult
from bench.recording.reader import RecordedCell


def tutorial_comparison(spec: StageSpec, result: CellResult) -> tuple[dict[str, float], str]:
    """The tutorial's test accuracy and this cell's gap to it in percentage points (where the
    tutorial reported one), and whether the stage's expectation was met: "true", "false" or
    "n/a" (a stage with no reference, or fewer epochs than its minimum was set for)."""
    metrics: dict[str, float] = {}
    reference = spec.expected.tutorial_test_accuracy
    if reference is not None:
        metrics["tutorial_test_accuracy"] = reference
        metrics["gap_to_tutorial_points"] = 100 * (result.test_accuracy - reference)
    expectation = spec.expected
    short = expectation.expect == "min_test_accuracy" and spec.training.epochs < spec.file_epochs
    if expectation.expect == "no_reference" or short:
        return metrics, "n/a"
    return metrics, str(expectation.met_by(result.outcome, result.test_accuracy)).lower()


def judged_met(spec: StageSpec, outcome: str, test_accuracy: float | None) -> str:
    """yes / NO against the stage's minimum, which holds only for the epochs it was set for;
    "-" for a stage without a reference."""
    if spec.expected.expect == "no_reference":
        return "-"
    calibrated = spec.file_epochs
    if spec.expected.expect == "min_test_accuracy" and spec.training.epochs < calibrated:
        return f"n/a ({spec.training.epochs} of {calibrated} epochs)"
    return "yes" if spec.expected.met_by(outcome, test_accuracy) else "NO"


def recorded_met(cell: RecordedCell) -> str:
    """The cell's tag expectation_met where recorded, else judged here as the closing table
    judges it (judged_met)."""
    recorded = cell.tags.get("expectation_met")
    if recorded is not None:
        return {"true": "yes", "false": "NO"}.get(recorded.lower(), recorded)
    if cell.outcome in ("failed", "unfinished"):
        return "no"
    if cell.spec is None:
        return "-"
    return judged_met(cell.spec, cell.outcome, cell.metrics.get("test_accuracy"))
