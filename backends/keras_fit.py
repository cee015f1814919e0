"""Keras `model.fit` on the backend that `keras_reference.select_backend` chose.

Imported only after it: Keras chooses its backend when it is imported. Each backend has its own
`_pin_*` (threads, TF32 off, a GPU where one is asked for), in the same order as in the
harness's backend modules; the model, the fit and its timing are the same on every backend.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import keras
import numpy as np

from backends.keras_measured import KerasFit, device_kind
from bench.core.data import Splits
from bench.core.errors import BenchError
from bench.core.options import Options
from bench.core.seeding import SeededRun
from bench.core.spec import StageSpec


class _EpochTimer(keras.callbacks.Callback):  # type: ignore[misc]
    """Seconds per epoch. Only epoch hooks, so Keras keeps its asynchronous batch dispatch;
    an epoch's end waits for its loss, so the clock reads after the epoch's last step."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: object = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


@dataclass(frozen=True)
class _Pinned:
    """What the framework says is in force once pinned."""

    tf32: bool
    intra_op_threads: int


def _no_gpu(framework: str) -> BenchError:
    return BenchError(f"{framework} sees no GPU for Keras to run on")


def _pin_tensorflow(device: str, threads: int) -> _Pinned:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.experimental.enable_tensor_float_32_execution(False)  # TF's default is on
    if device == "gpu" and not tf.config.list_physical_devices("GPU"):
        raise _no_gpu("TensorFlow")
    return _Pinned(
        tf32=bool(tf.config.experimental.tensor_float_32_execution_enabled()),
        intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads(),
    )


def _pin_torch(device: str, threads: int) -> _Pinned:
    import torch

    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != 1:
        torch.set_num_interop_threads(1)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if device == "gpu" and not torch.cuda.is_available():
        raise _no_gpu("PyTorch")
    return _Pinned(
        tf32=bool(torch.backends.cuda.matmul.allow_tf32),
        intra_op_threads=torch.get_num_threads(),
    )


def _pin_jax(device: str, threads: int) -> _Pinned:
    """The threads were set before JAX started (keras_reference.select_backend); XLA reads
    them from NPROC."""
    import jax

    # JAX's default lets a GPU's float32 products run in TF32.
    jax.config.update("jax_default_matmul_precision", "highest")
    if device == "gpu" and not _jax_gpus():
        raise _no_gpu("JAX")
    return _Pinned(
        tf32=jax.config.jax_default_matmul_precision != "highest",
        intra_op_threads=int(os.environ.get("NPROC") or os.cpu_count() or 1),
    )


def _jax_gpus() -> int:
    import jax

    try:
        return len(jax.devices("gpu"))
    except RuntimeError:  # no GPU platform: JAX raises rather than list none
        return 0


_PIN = {"tensorflow": _pin_tensorflow, "torch": _pin_torch, "jax": _pin_jax}


def fit(
    backend: str,
    spec: StageSpec,
    run: SeededRun,
    splits: Splits,
    options: Options,
    device: str,
) -> KerasFit:
    """`model.fit` with Keras on `backend` (Keras's name for it), on `device`, on the threads
    and for the epochs (None: the stage file's) of `options`."""
    if keras.backend.backend() != backend:
        raise RuntimeError(
            f"Keras runs on {keras.backend.backend()}, not {backend}: KERAS_BACKEND was set"
            " after Keras was imported"
        )
    pinned = _PIN[backend](device, options.threads)
    model = _model(spec, run)
    seconds = _epoch_seconds(model, spec, splits, options.epochs or spec.training.epochs)
    ran_on = _ran_on(model)
    if device_kind(ran_on) != device:  # the pin failed: no figure beats a wrong one
        raise RuntimeError(f"the Keras reference on keras/{backend} {device} ran on {ran_on}")
    batch = spec.training.batch_size
    samples = len(splits.train_x) // batch * batch  # Keras also runs the last partial batch
    return KerasFit(
        samples_per_s=float(np.median([samples / s for s in seconds[1:]])),
        ran_on=ran_on,
        keras_backend=keras.backend.backend(),
        keras_version=keras.__version__,
        tf32=pinned.tf32,
        intra_op_threads=pinned.intra_op_threads,
        jit_compile=bool(model.jit_compile),
    )


def _model(spec: StageSpec, run: SeededRun) -> keras.Model:
    """The stage's model with the run's initial weights, compiled with its SGD and loss."""
    sizes = spec.model.layer_sizes
    layers: list[keras.layers.Layer] = [keras.Input((sizes[0],))]
    for width in sizes[1:-1]:
        layers.append(keras.layers.Dense(width, activation="relu"))
        if spec.model.dropout_rate:
            layers.append(keras.layers.Dropout(spec.model.dropout_rate))
    layers.append(keras.layers.Dense(sizes[-1]))
    model = keras.Sequential(layers)
    model.set_weights([a for layer in run.layers for a in (layer.weight, layer.bias)])
    model.compile(
        optimizer=keras.optimizers.SGD(spec.optimizer.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _epoch_seconds(model: keras.Model, spec: StageSpec, splits: Splits, epochs: int) -> list[float]:
    timer = _EpochTimer()
    model.fit(
        splits.train_x,
        splits.train_y,
        batch_size=spec.training.batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=0,
        callbacks=[timer],
    )
    return timer.seconds


def _ran_on(model: keras.Model) -> str:
    """The device of the first weight: JAX arrays list theirs (`devices()`), TensorFlow and
    PyTorch tensors name one (`device`)."""
    value = model.weights[0].value
    if callable(getattr(value, "devices", None)):
        return str(next(iter(value.devices())))
    return str(value.device)
