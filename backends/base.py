"""The interface every backend implements, in the same method order in every module."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal, TypeVar

import numpy as np

from bench.core.data import Splits
from bench.core.seeding import SeededRun
from bench.core.spec import StageSpec

Device = Literal["cpu", "gpu"]
Split = Literal["val", "test"]
DType = Literal["float32", "float64"]
# PyTorch's CPU products: "mkl" (its default sgemm), "onednn" (the oneDNN it bundles), or
# "auto": whichever a short measurement on this machine finds faster (see backends.torch).
TorchMatmul = Literal["auto", "mkl", "onednn"]
ONEDNN_ONLY = (
    "--torch-matmul onednn: float32 training on a CPU, outside parity mode, only;"
    " drop it or use --torch-matmul auto"
)
T = TypeVar("T")
EVAL_BATCH = 10_000  # large evaluation batches: evaluation is not what is benchmarked


@dataclass(frozen=True)
class Settings:
    """How a backend computes, beyond the stage: precision, determinism, TF32 on GPUs."""

    dtype: DType = "float32"
    deterministic: bool = True  # TF op determinism / torch.use_deterministic_algorithms
    tf32: bool = False  # TensorFloat-32 matmuls on Ampere+ GPUs: faster, not exact
    # Parity: optimizer updates written out op by op, identically in every backend, instead
    # of each framework's fastest fused kernels (same rule, different rounding).
    parity: bool = False
    # Parity in float32: products, sums, the loss and its gradient computed in float64 and
    # rounded once to float32 (parameters, gradients, optimizer state and updates stay float32).
    # Each framework's float32 kernels sum in their own order, ~1e-7 apart, which Adam and
    # N(0, 1) weights amplify past any tolerance within 50 steps; rounded once, the two agree
    # to the last bit in nearly every element. "native": the frameworks' float32 kernels.
    parity_accumulate: Literal["float64", "native"] = "float64"
    # TensorFlow: compile the whole-epoch loop with XLA (fuses the elementwise ops; on this
    # model's CPU runs it is ~1.7x faster than the plain graph executor).
    xla: bool = True
    # PyTorch on a GPU: capture the training step in a CUDA graph and replay it (one launch
    # instead of ~40 per step; this model's GPU steps are launch-bound).
    cuda_graphs: bool = False
    # PyTorch on a CPU: which library computes the fast step's products (TorchMatmul).
    torch_matmul: TorchMatmul = "auto"
    # The model is a strict chain of ops: a second inter-op pool only competes for the cores.
    inter_op_threads: int = 1


DEFAULT_SETTINGS = Settings()


def compute_dtype(settings: Settings) -> DType:
    """The dtype a training step computes in (see Settings.parity_accumulate)."""
    if settings.parity and settings.parity_accumulate == "float64":
        return "float64"
    return settings.dtype


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
    def __init__(self, device: Device, threads: int, settings: Settings = DEFAULT_SETTINGS) -> None:
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
