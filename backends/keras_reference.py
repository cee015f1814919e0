"""The reference the backends are measured against: the same model trained with Keras fit.

Not a backend: it only reports throughput (samples/s of the steady epochs), so that the harness
can show how far its own training loops are from the framework's stock high-level path.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from bench.core.data import Splits
from bench.core.errors import BenchError
from bench.core.seeding import SeededRun
from bench.core.spec import StageSpec


class _EpochTimer(keras.callbacks.Callback):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: object = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


@dataclass(frozen=True)
class KerasFit:
    samples_per_s: float  # the median of the epochs after the first
    ran_on: str  # the device that held the model's weights, as TensorFlow names it
    tf32: bool


def _pin(device: str) -> str:
    """Run on the device of the cells the reference is compared with, with TF32 off as they
    are: left alone, Keras takes a GPU wherever there is one, with TF's default TF32 on."""
    tf.config.experimental.enable_tensor_float_32_execution(False)
    gpus = tf.config.list_physical_devices("GPU")
    if device == "gpu" and not gpus:
        raise BenchError("the Keras reference on the GPU: TensorFlow sees no GPU")
    if device == "cpu" and gpus:
        tf.config.set_visible_devices([], "GPU")
    return "/GPU:0" if device == "gpu" else "/CPU:0"


def keras_fit_samples_per_s(
    spec: StageSpec, run: SeededRun, splits: Splits, epochs: int, threads: int, device: str
) -> KerasFit:
    """Median samples/s over the epochs after the first of `model.fit` (SGD, the same weights)."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    with tf.device(_pin(device)):
        return _fit(spec, run, splits, epochs)


def _fit(spec: StageSpec, run: SeededRun, splits: Splits, epochs: int) -> KerasFit:
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
    batches = len(splits.train_x) // spec.training.batch_size
    samples = batches * spec.training.batch_size  # Keras also runs the last partial batch
    return KerasFit(
        samples_per_s=float(np.median([samples / s for s in timer.seconds[1:]])),
        ran_on=str(model.weights[0].value.device),
        tf32=bool(tf.config.experimental.tensor_float_32_execution_enabled()),
    )
