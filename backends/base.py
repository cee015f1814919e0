"""The interface every backend implements, in the same method order in every module."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import numpy as np

from bench.data import MnistSplits
from bench.seeding import SeededRun
from bench.spec import StageSpec

Device = Literal["cpu", "gpu"]
Split = Literal["val", "test"]
EVAL_BATCH = 10_000  # large evaluation batches: evaluation is not what is benchmarked


class Backend(ABC):
    """One framework running one stage on one device.

    Everything that must be identical across frameworks (initial weights, epoch orders, the
    dropout seed) comes in as numpy arrays; a backend draws no randomness of its own for them.
    """

    name: ClassVar[str]

    @abstractmethod
    def __init__(self, device: Device, threads: int) -> None:
        """Pin the device and the thread pools; must run before any other framework work."""

    @abstractmethod
    def environment(self) -> dict[str, str]:
        """Framework version, device model and thread settings, for the record."""

    @abstractmethod
    def load_data(self, splits: MnistSplits) -> None:
        """Copy the dataset to the device once; epochs then index it there."""

    @abstractmethod
    def build(self, spec: StageSpec, run: SeededRun) -> None:
        """Create parameters from the given initial weights, and the optimizer state."""

    @abstractmethod
    def train_epoch(self, order: np.ndarray) -> np.ndarray:
        """Train one epoch over train samples in `order`; return the per-step losses.

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
    def synchronize(self) -> None:
        """Wait until the device has finished all queued work."""


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return n_train // batch_size
