"""TensorFlow backend: the whole epoch is one compiled tf.function loop on the device."""

from __future__ import annotations

import contextlib
import os

# Quiet TF's C++ start-up banner; errors still show. Must be set before tensorflow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from backends.base import EVAL_BATCH, Backend, Device, Split, steps_per_epoch
from bench.data import MnistSplits
from bench.errors import BenchError
from bench.seeding import SeededRun
from bench.spec import StageSpec


class TensorFlowBackend(Backend):
    name = "tensorflow"

    def __init__(self, device: Device, threads: int) -> None:
        # Thread pools can only be set before TF initialises its runtime; a second backend in
        # one process keeps the first one's (environment() records what is in force).
        with contextlib.suppress(RuntimeError):
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        gpus = tf.config.list_physical_devices("GPU")
        if device == "gpu" and not gpus:
            raise BenchError("--device gpu: TensorFlow sees no GPU; use --device cpu")
        if device == "cpu" and gpus:
            tf.config.set_visible_devices([], "GPU")
        self._device_name = "/GPU:0" if device == "gpu" else "/CPU:0"
        self._device = device
        self._threads = threads

    def environment(self) -> dict[str, str]:
        env = {
            "framework": "tensorflow",
            "framework_version": tf.__version__,
            "intra_op_threads": str(tf.config.threading.get_intra_op_parallelism_threads()),
            "inter_op_threads": str(tf.config.threading.get_inter_op_parallelism_threads()),
        }
        if self._device == "gpu":
            details = tf.config.experimental.get_device_details(
                tf.config.list_physical_devices("GPU")[0]
            )
            env["gpu_model"] = str(details.get("device_name", "unknown"))
        return env

    def load_data(self, splits: MnistSplits) -> None:
        with tf.device(self._device_name):
            self._train_x = tf.constant(splits.train_x)
            self._train_y = tf.constant(splits.train_y, dtype=tf.int32)
            self._eval = {
                "val": (tf.constant(splits.val_x), tf.constant(splits.val_y, dtype=tf.int32)),
                "test": (tf.constant(splits.test_x), tf.constant(splits.test_y, dtype=tf.int32)),
            }

    def build(self, spec: StageSpec, run: SeededRun) -> None:
        self._spec = spec
        self._steps = steps_per_epoch(int(self._train_x.shape[0]), spec.training.batch_size)
        with tf.device(self._device_name):
            self._params = [
                tf.Variable(array) for layer in run.layers for array in (layer.weight, layer.bias)
            ]
            self._step = tf.Variable(0, dtype=tf.int64)  # steps taken; Adam's t, dropout key
            self._dropout_seed = tf.constant(run.dropout_seed, dtype=tf.int64)
            if spec.optimizer.name == "adam":
                self._m = [tf.Variable(tf.zeros_like(p)) for p in self._params]
                self._v = [tf.Variable(tf.zeros_like(p)) for p in self._params]
        self._epoch_fn = tf.function(self._epoch, jit_compile=False)
        self._logits_fn = tf.function(self._forward_eval)

    def train_epoch(self, order: np.ndarray) -> np.ndarray:
        with tf.device(self._device_name):
            losses = self._epoch_fn(tf.constant(order, dtype=tf.int32))
        return np.asarray(losses.numpy())  # .numpy() waits for the device

    def accuracy(self, split: Split) -> float:
        x, y = self._eval[split]
        correct = 0
        with tf.device(self._device_name):
            for start in range(0, int(x.shape[0]), EVAL_BATCH):
                logits = self._logits_fn(x[start : start + EVAL_BATCH])
                correct += int(
                    tf.reduce_sum(
                        tf.cast(
                            tf.equal(self._predict(logits), y[start : start + EVAL_BATCH]), tf.int32
                        )
                    )
                )
        return correct / int(x.shape[0])

    def logits(self, x: np.ndarray) -> np.ndarray:
        with tf.device(self._device_name):
            return np.asarray(self._logits_fn(tf.constant(x)).numpy())

    def parameters(self) -> list[np.ndarray]:
        return [np.asarray(p.numpy()) for p in self._params]

    def synchronize(self) -> None:
        # Host transfers already wait; this waits on anything still queued (GPU streams).
        if self._device == "gpu":
            tf.test.experimental.sync_devices()

    # --- compiled pieces -------------------------------------------------------------------

    def _forward(self, x: tf.Tensor, training: bool) -> tf.Tensor:
        rate = self._spec.model.dropout_rate
        n_layers = len(self._params) // 2
        h = x
        for i in range(n_layers):
            h = tf.matmul(h, self._params[2 * i]) + self._params[2 * i + 1]
            if i < n_layers - 1:
                h = tf.nn.relu(h)
                if training and rate > 0.0:
                    h = self._dropout(h, rate, i)
        return h

    def _forward_eval(self, x: tf.Tensor) -> tf.Tensor:
        return self._forward(x, training=False)

    def _dropout(self, h: tf.Tensor, rate: float, layer: int) -> tf.Tensor:
        # Stateless: the mask depends only on (dropout seed, step, layer), so reruns repeat it.
        key = tf.stack([self._dropout_seed, self._step * 16 + layer])
        keep = tf.random.stateless_uniform(tf.shape(h), seed=key) >= rate
        return tf.where(keep, h / (1.0 - rate), tf.zeros_like(h))

    def _predict(self, logits: tf.Tensor) -> tf.Tensor:
        if self._spec.loss.prediction == "argmax_relu_logits":
            logits = tf.nn.relu(logits)
        return tf.argmax(logits, axis=1, output_type=tf.int32)

    def _epoch(self, order: tf.Tensor) -> tf.Tensor:
        batch = self._spec.training.batch_size
        losses = tf.TensorArray(tf.float32, size=self._steps)
        for i in tf.range(self._steps):
            idx = order[i * batch : (i + 1) * batch]
            x = tf.gather(self._train_x, idx)
            y = tf.gather(self._train_y, idx)
            with tf.GradientTape() as tape:
                logits = self._forward(x, training=True)
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
                )
            grads = tape.gradient(loss, self._params)
            self._step.assign_add(1)
            self._update(grads)
            losses = losses.write(i, loss)
        return losses.stack()

    def _update(self, grads: list[tf.Tensor]) -> None:
        opt = self._spec.optimizer
        lr = opt.learning_rate
        if opt.name == "sgd":
            for p, g in zip(self._params, grads, strict=True):
                p.assign_sub(lr * g)
            return
        assert opt.beta1 is not None and opt.beta2 is not None and opt.epsilon is not None
        # TF1 AdamOptimizer: bias correction folded into the step size, epsilon outside it.
        t = tf.cast(self._step, tf.float32)
        lr_t = lr * tf.sqrt(1.0 - opt.beta2**t) / (1.0 - opt.beta1**t)
        for p, g, m, v in zip(self._params, grads, self._m, self._v, strict=True):
            m.assign(opt.beta1 * m + (1.0 - opt.beta1) * g)
            v.assign(opt.beta2 * v + (1.0 - opt.beta2) * tf.square(g))
            p.assign_sub(lr_t * m / (tf.sqrt(v) + opt.epsilon))
