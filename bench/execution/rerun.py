"""Rerun a recorded cell from what MLflow holds of it, and say whether it is bit-identical."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench.core.datasets import get_dataset
from bench.core.spec import StageSpec, parse_stage, with_epochs
from bench.core.types import CellResult, environment_of

# Environment params whose change can explain a result that is not bit-identical.
ENVIRONMENT_KEYS = (
    "data_sha256",
    "framework_version",
    "numpy_version",
    "numpy_blas",
    "framework_blas",
    "python_version",
    "platform",
    "cpu_model",
    "cpu_isa",
    "torch_matmul",
    "gpu_model",
    "cuda_version",
    "cudnn_version",
    "onednn_opts",
    "intra_op_threads",
    "inter_op_threads",
    "deterministic_ops",
    "tf32",
    "dtype",
    "git_commit",
    "git_dirty",
)
# A recorded stage text is part of the record: no stage file of the user's can fix it.
_RECORD_FIX = (
    "no stage file can fix a record: it was altered, or made by an mlp-bench that checks"
    " stages differently (see its git_commit param); reproduce it with that version"
)
# What a key means, where its name alone does not say it ({title}: the data set's).
_KEY_LABELS = {"data_sha256": "data_sha256 (the {title} arrays trained and evaluated on)"}


def recorded_spec(stage_text: str, run_id: str) -> StageSpec:
    """The spec of a run's recorded stage text (a record no stage file can fix)."""
    return parse_stage(stage_text, f"the recorded stage text of run {run_id}", _RECORD_FIX)


def spec_differences(
    stage_text: str, params: dict[str, str], run_id: str
) -> dict[str, tuple[str, str]]:
    """Recorded spec params that the recorded stage file (with the recorded epochs) disagrees
    with: a sign that the artifact and the params do not belong together."""
    spec = with_epochs(
        recorded_spec(stage_text, run_id), int(params.get("training.epochs", "0")) or None
    )
    return {k: (params.get(k, "-"), v) for k, v in spec.flat().items() if params.get(k) != v}


@dataclass(frozen=True)
class Comparison:
    losses_identical: bool
    first_differing_step: int | None
    max_abs_loss_diff: float
    accuracy_identical: bool
    recorded_accuracy: float
    new_accuracy: float
    environment: dict[str, tuple[str, str]]  # key -> (recorded, now), only where they differ
    data_title: str  # the data set's, as its messages name it ("MNIST")

    @property
    def bit_identical(self) -> bool:
        return self.losses_identical and self.accuracy_identical

    def describe(self) -> str:
        lines = [f"bit-identical: {'yes' if self.bit_identical else 'NO'}"]
        if not self.losses_identical:
            where = (
                f"first at step {self.first_differing_step}"
                if self.first_differing_step
                else "different number of steps"
            )
            lines.append(
                f"  per-step losses differ ({where}; largest |difference| "
                f"{self.max_abs_loss_diff:.3e})"
            )
        accuracy = "same" if self.accuracy_identical else "DIFFERENT"
        lines.append(
            f"  test accuracy: recorded {100 * self.recorded_accuracy:.2f}%, now "
            f"{100 * self.new_accuracy:.2f}% ({accuracy})"
        )
        if self.environment:
            lines.append("  environment differences (recorded -> now):")
            lines += [
                f"    {_KEY_LABELS.get(k, k).format(title=self.data_title)}: {old} -> {new}"
                for k, (old, new) in self.environment.items()
            ]
        else:
            lines.append("  environment: same data, versions, hardware, threads and settings")
        return "\n".join(lines)


def compare(
    recorded_losses: np.ndarray,
    recorded: dict[str, str],
    recorded_accuracy: float,
    result: CellResult,
) -> Comparison:
    new = result.step_losses.astype(np.float64)
    old = recorded_losses.astype(np.float64)
    same_length = len(new) == len(old)
    equal = same_length and bool(np.array_equal(new, old, equal_nan=True))
    first = None
    max_diff = float("nan")
    if same_length and not equal:
        differs = ~((new == old) | (np.isnan(new) & np.isnan(old)))
        first = int(np.flatnonzero(differs)[0]) + 1
        max_diff = float(np.nanmax(np.abs(new - old)))
    then = environment_of(recorded)
    env = {k: (then.get(k, "-"), result.environment.get(k, "-")) for k in ENVIRONMENT_KEYS}
    return Comparison(
        losses_identical=equal,
        first_differing_step=first,
        max_abs_loss_diff=max_diff,
        accuracy_identical=recorded_accuracy == result.test_accuracy,
        recorded_accuracy=recorded_accuracy,
        new_accuracy=result.test_accuracy,
        environment={k: v for k, v in env.items() if v[0] != v[1]},
        data_title=get_dataset(result.dataset).title,
    )
