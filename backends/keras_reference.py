"""The reference the backends are measured against: the same model trained with Keras fit.

Not a backend: it only reports throughput (samples/s of the steady epochs), so that the harness
can show how far its own training loops are from the framework's stock high-level path.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

from bench.data import MnistSplits
from bench.seeding import SeededRun
from bench.spec import StageSpec


class _EpochTimer(keras.callbacks.Callback):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: object = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: object = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def keras_fit_samples_per_s(
    spec: StageSpec, run: SeededRun, splits: MnistSplits, epochs: int, threads: int
) -> float:
    """Median samples/s over the epochs after the first of `model.fit` (SGD, the same weights)."""
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
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
    return float(np.median([samples / s for s in timer.seconds[1:]]))
