"""The interface every backend implements, and what they share: the method order of every module.

Each backend module mirrors the others below the surface too (as Keras 3's backends do): after
the public methods, in this order, the same private helpers with the same names, typed in the
framework's arrays (A) and its dropout RNG (R):

  _runtime() -> Runtime                       what environment() records of the framework
  _put(array) -> A                            a host array onto the device, as it is
  _dropout_rng(seed) -> R                     the run's dropout RNG
  _epoch(...)                                 every step of one epoch (compiled in TF and JAX)
  _step(x, y, masks, lr) -> loss              one training step: loss, gradients, _update
  _loss(params, x, y, masks) -> A             mean softmax cross-entropy, in compute_dtype
  _forward(params, x, masks) -> A             logits; dropout where masks are given
  _step_rng(rng, step) -> R                   the dropout RNG of one step
  _dropout_masks(rng, shapes) -> list[A]      one step's own 16-bit-threshold masks
  _update(state, grads, lr)                   SGD or the TF1 Adam rule, the framework's kernels
  _update_explicit(state, grads, lr)          the same, written out op by op (parity mode)
  _logits(x) -> A                             logits of the current parameters, no dropout
  _predict(logits) -> A                       class indices
  _to_host(array) -> np.ndarray

then what only that framework has (PyTorch's fast step, _step_fast, with its hand-written
backward). JAX's arrays are immutable: its _step and _update also take the State and return
the new one, and take the runtime zero its parity update needs (jax._stored). accuracy(),
logits(), environment() and own_dropout_masks() are written once, here, on top of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, NamedTuple, TypeVar

import numpy as np

from bench.core.data import Splits
from bench.core.options import Options
from bench.core.seeding import SeededRun
from bench.core.spec import StageSpec
from bench.core.types import Device, Product

Split = Literal["val", "test"]
A = TypeVar("A")  # a framework's array (or variable) type
EVAL_BATCH = 10_000  # large evaluation batches: evaluation is not what is benchmarked


# Per hidden layer, for every step of an epoch: which units dropout keeps, shape
# (steps, batch, units), drawn by numpy (parity mode). None: the framework's own seeded RNG.
Masks = list[np.ndarray] | None
# One hidden layer's output for a batch: (batch, units).
Shape = tuple[int, int]


class State(NamedTuple, Generic[A]):
    """What the optimizer updates: the parameters (w1, b1, w2, b2, ...) and Adam's moments
    (empty for SGD). TensorFlow holds variables and PyTorch tensors, updated in place; JAX's
    update returns a new State."""

    params: tuple[A, ...]
    m: tuple[A, ...]
    v: tuple[A, ...]


@dataclass(frozen=True)
class Runtime:
    """What a backend reports of its framework; environment() adds what every backend records
    the same way (its name, dtypes) and writes the flags as "true"/"false"."""

    framework_version: str
    intra_op_threads: str
    inter_op_threads: str
    deterministic_ops: bool
    tf32: bool
    dropout_rng: str  # the generator behind the framework's own dropout masks
    cuda_version: str
    cudnn_version: str
    gpu_model: str | None  # None on the CPU
    extra: dict[str, str]  # what only this framework records


class Backend(ABC):
    """One framework running one stage on one device.

    Everything that must be identical across frameworks (initial weights, epoch orders, the
    dropout seed) comes in as numpy arrays; a backend draws no randomness of its own for them.
    """

    name: ClassVar[str]
    _device_kind: Device
    _options: Options
    _spec: StageSpec
    _t: int  # steps taken: Adam's t, and the step number of the dropout RNGs
    # Per split, the inputs on the device in EVAL_BATCH slices and their labels on the host.
    _eval: dict[Split, list[tuple[Any, np.ndarray]]]

    @abstractmethod
    def __init__(self, device: Device, options: Options) -> None:
        """Pin the device, thread pools and numerics; must run before other framework work.
        (Each backend calls this first: it only records the device and the options.)"""
        self._device_kind = device
        self._options = options

    @staticmethod
    @abstractmethod
    def visible_gpus() -> int:
        """How many GPUs the framework itself can use in this process (0 on a CPU-only build,
        with CUDA_VISIBLE_DEVICES hiding them, or with a driver too old for its CUDA)."""

    def environment(self) -> dict[str, str]:
        """Framework and library versions, device model, threads, determinism, for the record."""
        runtime = self._runtime()
        env = {
            "framework": self.name,
            "framework_version": runtime.framework_version,
            "intra_op_threads": runtime.intra_op_threads,
            "inter_op_threads": runtime.inter_op_threads,
            "deterministic_ops": _flag(runtime.deterministic_ops),
            "tf32": _flag(runtime.tf32),
            "dtype": self._options.dtype,
            "compute_dtype": self._options.compute_dtype,
            "dropout_rng": runtime.dropout_rng,
            "cuda_version": runtime.cuda_version,
            "cudnn_version": runtime.cudnn_version,
            **runtime.extra,
        }
        if runtime.gpu_model is not None:
            env["gpu_model"] = runtime.gpu_model
        return env

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

    def accuracy(self, split: Split) -> float:
        """Test or validation accuracy of the current parameters (no dropout)."""
        correct = total = 0
        for x, labels in self._eval[split]:
            # Class indices are exact wherever they are compared: on the host, once.
            predicted = self._to_host(self._predict(self._logits(x)))
            correct += int(np.count_nonzero(predicted == labels))
            total += len(labels)
        return correct / total

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Logits of the current parameters for a batch of inputs (no dropout)."""
        return self._to_host(self._logits(self._put(np.asarray(x, self._options.dtype))))

    @abstractmethod
    def parameters(self) -> list[np.ndarray]:
        """Current weights and biases as host arrays, in layer order (w1, b1, w2, b2, ...)."""

    @abstractmethod
    def matmul_seconds(self, size: int, repeats: int) -> float:
        """Seconds for `repeats` float32 products of two size x size matrices on the device,
        after one warm-up product, synchronised before the clock is read (the peak rate)."""

    @abstractmethod
    def products_seconds(self, products: Sequence[Product], repeats: int) -> float:
        """Seconds for `repeats` rounds of the float32 products of a training step, one
        after another, each operand stored as the step stores it (Product.transposed), through
        the path the cells' steps take (their library, compiler and dispatch), after a warm-up
        run, synchronised before the clock is read: the step's attainable limit, where nothing
        but its products runs."""

    @abstractmethod
    def device_memory_peak_mb(self) -> float | None:
        """Peak accelerator memory the framework allocated, in MiB; None on the CPU."""

    @abstractmethod
    def synchronize(self) -> None:
        """Wait until the device has finished all queued work."""

    def own_dropout_masks(self, shape: Shape, draws: int, seed: int) -> np.ndarray:
        """The framework's own dropout masks of `draws` steps (1, 2, ...) for one hidden layer
        of `shape`, as training with dropout seed `seed` draws them: (draws, *shape), True
        where a unit is kept. For tests; needs a built stage with dropout (its rate)."""
        rng = self._dropout_rng(seed)
        # > 0: PyTorch's own masks are factors, 0 or the kept units' scale.
        return np.stack(
            [
                self._to_host(self._dropout_masks(self._step_rng(rng, step), [shape])[0]) > 0
                for step in range(1, draws + 1)
            ]
        )

    # --- shared pieces ---------------------------------------------------------------------

    def _batches(self, order: np.ndarray) -> np.ndarray:
        """`order` as (steps, batch) sample indices, a trailing partial batch dropped."""
        batch = self._spec.training.batch_size
        steps = len(order) // batch
        return order[: steps * batch].reshape(steps, batch)

    def _step_sizes(self, steps: int) -> np.ndarray:
        """The learning rate of each step of this epoch (Adam's varies with t)."""
        opt = self._spec.optimizer
        if opt.name == "sgd":
            return np.full(steps, opt.learning_rate)
        assert opt.beta1 is not None and opt.beta2 is not None
        ts = range(self._t + 1, self._t + steps + 1)
        return np.array([adam_step_size(opt.learning_rate, opt.beta1, opt.beta2, t) for t in ts])

    def _hidden_shapes(self) -> list[Shape]:
        """The hidden layers' outputs for one training batch: what dropout masks."""
        batch = self._spec.training.batch_size
        return [(batch, width) for width in self._spec.model.layer_sizes[1:-1]]

    def _eval_batches(self, splits: Splits) -> dict[Split, list[tuple[Any, np.ndarray]]]:
        """The validation and test inputs on the device, in slices of EVAL_BATCH; their labels
        stay on the host, where accuracy() compares the predictions."""
        return {
            "val": self._eval_slices(splits.val_x, splits.val_y),
            "test": self._eval_slices(splits.test_x, splits.test_y),
        }

    def _eval_slices(self, x: np.ndarray, y: np.ndarray) -> list[tuple[Any, np.ndarray]]:
        dtype = np.dtype(self._options.dtype)
        starts = range(0, len(y), EVAL_BATCH)
        return [
            (self._put(np.asarray(x[s : s + EVAL_BATCH], dtype)), y[s : s + EVAL_BATCH])
            for s in starts
        ]

    # --- per framework (see the module's doc for the whole list) ---------------------------

    @abstractmethod
    def _runtime(self) -> Runtime: ...

    @abstractmethod
    def _put(self, array: np.ndarray) -> Any: ...

    @abstractmethod
    def _dropout_rng(self, seed: int) -> Any: ...

    @abstractmethod
    def _step_rng(self, rng: Any, step: int) -> Any: ...

    @abstractmethod
    def _dropout_masks(self, rng: Any, shapes: list[Shape]) -> list[Any]: ...

    @abstractmethod
    def _logits(self, x: Any) -> Any: ...

    @abstractmethod
    def _predict(self, logits: Any) -> Any: ...

    @abstractmethod
    def _to_host(self, array: Any) -> np.ndarray: ...


def _flag(value: bool) -> str:
    return str(value).lower()


def initial_arrays(run: SeededRun) -> list[np.ndarray]:
    """The initial parameters in layer order: w1, b1, w2, b2, ..."""
    return [array for layer in run.layers for array in (layer.weight, layer.bias)]


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    return n_train // batch_size


def adam_step_size(lr: float, beta1: float, beta2: float, t: int) -> float:
    """TF1 AdamOptimizer's lr_t = lr * sqrt(1 - beta2^t) / (1 - beta1^t), in float64 on the
    host, so that every backend uses the very same number."""
    return float(lr * np.sqrt(1.0 - beta2**t) / (1.0 - beta1**t))


def dropout_threshold(rate: float) -> int:
    """Outside parity, each framework's dropout draws 16-bit uniforms (cheaper than floats:
    several per random word) and drops a unit when its value is below this threshold; the
    drop probability is then this over 2**16 (0.3 becomes 0.3000031), far below what training
    can detect. Every backend uses the same rule, so the record states one effective rate."""
    return round(rate * 2**16)


def effective_dropout_rate(rate: float) -> float:
    return dropout_threshold(rate) / 2**16
