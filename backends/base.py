"""The interface every backend implements, in the same method order in every module."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar, Literal, TypeVar

import numpy as np

from bench.core.data import Splits
from bench.core.options import Options
from bench.core.seeding import SeededRun
from bench.core.spec import StageSpec
from bench.core.types import Device

Split = Literal["val", "test"]
T = TypeVar("T")
EVAL_BATCH = 10_000  # large evaluation batches: evaluation is not what is benchmarked


# Per hidden layer, for every step of an epoch: which units dropout keeps, shape
# (steps, batch, units), drawn by numpy (parity mode). None: the framework's own seeded RNG.
Masks = list[np.ndarray] | None


class Backend(ABC):
    """One framework running one stage on one device.

    Everything that must be identical across frameworks (initial weights, epoch orders, the
    dropout seed) comes in as numpy arrays; a backend draws no randomness of its own for them.
    """

    name: ClassVar[str]

    @abstractmethod
    def __init__(self, device: Device, options: Options) -> None:
        """Pin the device, thread pools and numerics; must run before other framework work."""

    @staticmethod
    @abstractmethod
    def visible_gpus() -> int:
        """How many GPUs the framework itself can use in this process (0 on a CPU-only build,
        with CUDA_VISIBLE_DEVICES hiding them, or with a driver too old for its CUDA)."""

    @abstractmethod
    def environment(self) -> dict[str, str]:
        """Framework and library versions, device model, threads, determinism, for the record."""

    @abstractmethod
    def load_data(self, splits: Splits) -> None:
        """Copy the dataset to the device once; epochs then index it there."""

    @abstractmethod
    def build(self, spec: StageSpec, run: SeededRun) -> None:
        """Create parameters from the given initial weights, and the optimizer state."""

    @abstractmethod
    def train_epoch(self, order: np.ndarray, masks: Masks = None) -> np.ndarray:
        """Train one step per full batch of `order` (sample indices); return the step losses.

        The returned host array means the device has finished the epoch (synchronised).
        A trailing partial batch is dropped, as the tutorial's int(55000 / 100) batches did.
        """

    @abstractmethod
    def accuracy(self, split: Split) -> float:
        """Test or validation accuracy of the current parameters (no dropout)."""

    @abstractmethod
    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits of the current parameters for a batch of inputs (no dropout)."""

    @abstractmethod
    def parameters(self) -> list[np.ndarray]:
        """Current weights and biases as host arrays, in layer order (w1, b1, w2, b2, ...)."""

    @abstractmethod
    def matmul_seconds(self, size: int, repeats: int) -> float:
        """Seconds for `repeats` float32 products of two size x size matrices on the device,
        after one warm-up product, synchronised before the clock is read (the peak rate)."""

    @abstractmethod
    def device_memory_peak_mb(self) -> float | None:
        """Peak accelerator memory the framework allocated, in MiB; None on the CPU."""

    @abstractmethod
    def synchronize(self) -> None:
        """Wait until the device has finished all queued work."""


def eval_splits(splits: Splits, put: Callable[[np.ndarray, np.ndarray], T]) -> dict[str, T]:
    """The validation and test splits, each placed on the device by `put` (inputs, labels)."""
    return {"val": put(splits.val_x, splits.val_y), "test": put(splits.test_x, splits.test_y)}


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return n_train // batch_size


def adam_step_size(lr: float, beta1: float, beta2: float, t: int) -> float:
    """TF1 AdamOptimizer's lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t), in float64 on the
    host, so that both backends use the very same number."""
    return float(lr * np.sqrt(1.0 - beta2**t) / (1.0 - beta1**t))


def dropout_threshold(rate: float) -> int:
    """Outside parity, each framework's dropout draws 16-bit uniforms (cheaper than floats:
    several per random word) and drops a unit when its value is below this threshold; the
    drop probability is then this over 2**16 (0.3 becomes 0.3000031), far below what training
    can detect. Both backends use the same rule, so the record states one effective rate."""
    return round(rate * 2**16)


def effective_dropout_rate(rate: float) -> float:
    return dropout_threshold(rate) / 2**16
