"""The types the layers pass to each other: a cell, its epochs, its result, what running it
produced. Framework-free (numpy and the standard library), so that recording and reporting
need not import the runner or the matrix for them."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np

Device = Literal["cpu", "gpu"]
DType = Literal["float32", "float64"]
Outcome = Literal["converged", "did-not-learn", "diverged"]
# A finite run whose test accuracy stays below this has not learned (chance is 10%).
LEARNED_ACCURACY = 0.5


class Product(NamedTuple):
    """A product of a training step: an m x k matrix times a k x n one. `transposed` names the
    operand the step reads transposed from how it is stored: "a" (a weight gradient's layer
    inputs, batch x in, stored k x m), "b" (an input gradient's weights, in x out, stored
    n x k), or none ("")."""

    m: int
    k: int
    n: int
    transposed: str = ""

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n

    @property
    def stored(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The shapes of the two operands as the step stores them."""
        a = (self.k, self.m) if self.transposed == "a" else (self.m, self.k)
        b = (self.n, self.k) if self.transposed == "b" else (self.k, self.n)
        return a, b


def layer_products(batch: int, layer_sizes: Sequence[int]) -> list[Product]:
    """The products one training step of this MLP computes, in the order the backends compute
    them: each layer's forward (batch x in by in x out), then from the top each layer's
    gradient for the layer below (batch x out by out x in; not the first layer's) and its
    weights' (in x batch by batch x out), each operand laid out as the step stores it."""
    layers = list(itertools.pairwise(layer_sizes))
    forward = [Product(batch, fan_in, fan_out) for fan_in, fan_out in layers]
    backward: list[Product] = []
    for index, (fan_in, fan_out) in reversed(list(enumerate(layers))):
        if index > 0:  # delta @ W.T, W stored in x out
            backward.append(Product(batch, fan_out, fan_in, "b"))
        backward.append(Product(fan_in, batch, fan_out, "a"))  # h.T @ delta, h batch x in
    return forward + backward


@dataclass(frozen=True)
class Cell:
    stage: str
    backend: str
    device: Literal["cpu", "gpu"]
    seed: int

    @property
    def group(self) -> str:
        """The cells that differ only by seed form a group: statistics are taken over it."""
        return f"{self.stage}/{self.backend}/{self.device}"

    @property
    def name(self) -> str:
        return f"{self.group}/seed{self.seed}"


# A cell's environment (versions, hardware, threads, ...) is recorded as params under this
# prefix, so that the MLflow UI's "show diff only" sets it apart from the stage and options.
ENV_PREFIX = "env."


def environment_of(params: dict[str, str]) -> dict[str, str]:
    """A recorded cell's environment from its params, without the prefix (runs recorded
    before the prefix hold it unprefixed: every param that is not a spec or option one)."""
    prefixed = {k[len(ENV_PREFIX) :]: v for k, v in params.items() if k.startswith(ENV_PREFIX)}
    return prefixed or dict(params)


@dataclass(frozen=True)
class EpochRecord:
    epoch: int  # 1-based
    steps: int  # training steps (batches) in this epoch
    train_loss: float  # mean of the epoch's step losses
    val_accuracy: float
    epoch_seconds: float  # training only, device synchronised; evaluation excluded


# The EpochRecord fields recorded as per-epoch metric histories: written and read by this list.
EPOCH_METRICS = ("train_loss", "val_accuracy", "epoch_seconds")


@dataclass
class CellResult:
    cell: Cell
    outcome: Outcome
    test_accuracy: float
    train_samples_per_s: float | None  # None with a single epoch: the first is warm-up
    spread: dict[str, float]  # min, p25, p75, max of the steady epochs' samples/s
    memory: dict[str, float]  # peak_rss_mb (the cell's process), peak_gpu_memory_mb
    epochs: list[EpochRecord]
    environment: dict[str, str]
    timings: dict[str, float]  # seconds spent per phase inside the cell's process
    diverged_step: int | None = None  # 1-based global step of the first non-finite loss
    step_losses: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32), repr=False)
    parameters: list[np.ndarray] = field(default_factory=list, repr=False)
    # The stage's data set, which the run's dataset inputs describe ("mnist" for results kept
    # on disk before there was a choice).
    dataset: str = "mnist"

    def to_json(self) -> dict[str, Any]:
        """Everything but the arrays, which travel as .npy/.npz files (see save_arrays)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del data["step_losses"], data["parameters"]
        data["cell"] = dataclasses.asdict(self.cell)
        data["epochs"] = [dataclasses.asdict(e) for e in self.epochs]
        return data

    def save_arrays(self, folder: Path) -> None:
        np.save(folder / "step_losses.npy", self.step_losses)
        if self.parameters:
            np.savez(folder / "parameters.npz", *self.parameters)

    @classmethod
    def load(cls, data: dict[str, Any], folder: Path) -> CellResult:
        params_path = folder / "parameters.npz"
        parameters = []
        if params_path.exists():
            with np.load(params_path) as arrays:
                parameters = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
        return cls(
            **{
                **data,
                "cell": Cell(**data["cell"]),
                "epochs": [EpochRecord(**e) for e in data["epochs"]],
                "step_losses": np.load(folder / "step_losses.npy"),
                "parameters": parameters,
            }
        )


@dataclass(frozen=True)
class CellLoad:
    """The machine around one cell: the canary before and after, what else ran during it, and
    the reasons (if any) its speed is not to be trusted."""

    canary_before_samples_per_s: float
    canary_after_samples_per_s: float
    others_cpu_cores: float | None
    steal_fraction: float | None
    unstable_reasons: tuple[str, ...] = ()
    # Why the canary's two figures cannot be believed ("canary unreliable: 85x between before
    # and after"), "" when they can: a failure of the measurement, which judges nothing.
    canary_failure: str = ""

    @property
    def canary_change(self) -> float:
        return self.canary_after_samples_per_s / self.canary_before_samples_per_s - 1.0

    @property
    def stable(self) -> bool:
        return not self.unstable_reasons

    def metrics(self) -> dict[str, float]:
        texts = ("unstable_reasons", "canary_failure")
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in texts}
        values["canary_change"] = self.canary_change
        return {k: float(v) for k, v in values.items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CellLoad:
        """The inverse of dataclasses.asdict through JSON (a kept, unrecorded cell)."""
        return cls(**{**data, "unstable_reasons": tuple(data["unstable_reasons"])})

    def tags(self) -> dict[str, str]:
        tags = {"speed_stable": str(self.stable).lower()}
        if not self.stable:
            tags["speed_unstable_reason"] = "; ".join(self.unstable_reasons)[:500]
        if self.canary_failure:
            tags["canary_unreliable"] = self.canary_failure
        return tags


@dataclass
class CellRun:
    """What executing a cell produced: a result, or an error message and the log."""

    cell: Cell
    result: CellResult | None
    error: str | None
    wall_seconds: float
    log_path: Path
    # Seconds measured outside the cell's process: process start, MLflow logging, display.
    timings: dict[str, float] = field(default_factory=dict)
    # What the execution derived before recording (bench.recording.speed.speed_figures): time
    # breakdown, harness share, GFLOP/s, roofline fraction.
    speed: dict[str, float] = field(default_factory=dict)
    # The end of a failed worker's log, kept where the log itself does not outlive the run.
    log_tail: str = ""
    # The machine around the cell (canary before and after, other processes' CPU) and the
    # verdict on its speed; None where not watched.
    load: CellLoad | None = None
    # Where a cluster executor ran it: host name and node id ({}: this machine, one at a time).
    node: dict[str, str] = field(default_factory=dict)
    # The peaks measured on its own node, (backend, device) -> GFLOP/s; None: the invocation's.
    peaks: dict[tuple[str, str], float] | None = None
    # Why each earlier attempt was lost (its node or worker process died), one line each.
    retries: list[str] = field(default_factory=list)

    def placement_tags(self) -> dict[str, str]:
        """The node it ran on and its retries, as tags (none for a local cell)."""
        tags = {f"node_{key}": value for key, value in self.node.items()}
        if self.retries:
            tags["retries"] = str(len(self.retries))
            tags["retried_after"] = " | ".join(self.retries)[:500]
        return tags
