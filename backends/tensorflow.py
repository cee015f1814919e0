"""TensorFlow backend: the whole epoch is one compiled tf.function loop on the device."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

# Quiet TF's C++ start-up banner; errors still show. Must be set before tensorflow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from backends.base import (
    EVAL_BATCH,
    Backend,
    Masks,
    Split,
    adam_step_size,
    dropout_threshold,
    eval_splits,
)
from bench.core.data import Splits
from bench.core.errors import BenchError
from bench.core.options import Options
from bench.core.seeding import SeededRun
from bench.core.spec import StageSpec
from bench.core.types import Device

# A batch's mean softmax cross-entropy, from (logits, integer labels).
CrossEntropy = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


@tf.custom_gradient  # type: ignore[untyped-decorator]
def _mean_cross_entropy(logits: tf.Tensor, labels: tf.Tensor) -> Any:
    """The mean of TF's fused sparse softmax cross-entropy, its own backprop as the gradient.

    This is the gradient TensorFlow takes by default. With op determinism on, TF instead
    differentiates log_softmax and a gather of each row's label (its GPU kernel is not
    deterministic); under XLA on a CPU that made the Adam stage ~9% slower, while the fused
    op is deterministic on a CPU (the bitwise-rerun tests check it).
    """
    xent, backprop = tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(features=logits, labels=labels)

    def grad(upstream: tf.Tensor) -> tuple[tf.Tensor, None]:
        # As TF's own gradients compose: reduce_mean's (upstream / n), times the backprop.
        per_row = upstream / tf.cast(tf.shape(logits)[0], logits.dtype)
        return backprop * per_row, None

    return tf.reduce_mean(xent), grad


@tf.custom_gradient  # type: ignore[untyped-decorator]
def _mean_cross_entropy_dense(logits: tf.Tensor, labels: tf.Tensor) -> Any:
    """The same mean cross-entropy from one-hot rows, gradient (softmax - onehot) / batch.

    For GPUs under op determinism. TF's deterministic form gathers each row's log-probability
    and differentiates the gather into a scatter-add, which XLA with deterministic ops may
    expand into a serial loop. Here every op is elementwise or a per-row reduction (no
    gather, no scatter; a test reads the compiled HLO), as in the torch backend's fast step.
    """
    log_probs = tf.nn.log_softmax(logits)
    onehot = tf.one_hot(labels, logits.shape[-1], dtype=logits.dtype)

    def grad(upstream: tf.Tensor) -> tuple[tf.Tensor, None]:
        per_row = upstream / tf.cast(tf.shape(logits)[0], logits.dtype)
        return (tf.exp(log_probs) - onehot) * per_row, None

    return -tf.reduce_mean(tf.reduce_sum(onehot * log_probs, axis=1)), grad


def _mean_cross_entropy_taped(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """TF's own sparse cross-entropy, differentiated by the tape (parity: ops as written)."""
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    )


# Outside parity: the fused kernel's own backprop is deterministic on a CPU only.
_FAST_CROSS_ENTROPY: dict[Device, CrossEntropy] = {
    "cpu": _mean_cross_entropy,
    "gpu": _mean_cross_entropy_dense,
}


def mean_cross_entropy_for(parity: bool, device: Device) -> CrossEntropy:
    """The loss a training step differentiates: in parity mode TF's op as written, for the
    tape; otherwise a deterministic form with a hand-written gradient, per device."""
    return _mean_cross_entropy_taped if parity else _FAST_CROSS_ENTROPY[device]


def _memory_growth(gpu: Any) -> bool:
    """Whether TF grows its memory on this GPU: TF_FORCE_GPU_ALLOW_GROWTH, when "true" or
    "false", overrides the setting (TF's GPU allocator reads it)."""
    forced = os.environ.get("TF_FORCE_GPU_ALLOW_GROWTH")
    if forced in ("true", "false"):
        return forced == "true"
    return bool(tf.config.experimental.get_memory_growth(gpu))


class TensorFlowBackend(Backend):
    name = "tensorflow"

    def __init__(self, device: Device, options: Options) -> None:
        threads = options.threads
        # Thread pools can only be set before TF initialises its runtime; a second backend in
        # one process keeps the first one's (environment() records what is in force).
        with contextlib.suppress(RuntimeError):
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(options.inter_op_threads)
        if options.deterministic:
            tf.config.experimental.enable_op_determinism()
        if options.parity:
            # Parity wants each op as written, rounded as written: Grappler rewrites graphs
            # ((g * g) * c comes out 1 ulp off in a third of the elements) and XLA's code
            # generator fuses p - lr * g into one FMA (one rounding instead of two).
            tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
        # TF enables TF32 by default on Ampere+; off unless asked, so GPU results are exact.
        tf.config.experimental.enable_tensor_float_32_execution(options.tf32)
        gpus = tf.config.list_physical_devices("GPU")
        if device == "gpu" and not gpus:
            raise BenchError("--device gpu: TensorFlow sees no GPU; use --device cpu")
        if device == "gpu":
            # By default TF reserves nearly all GPU memory when its runtime starts, and PyTorch
            # in the same process (tests run both) then finds none. Settable before the runtime
            # initialises only; a later backend keeps the first's (environment() records it).
            for gpu in gpus:
                with contextlib.suppress(RuntimeError):
                    tf.config.experimental.set_memory_growth(gpu, True)
        if device == "cpu" and gpus:
            # Keeps a CPU cell's process off the GPU; once TF's runtime is up (a GPU backend
            # earlier in this process) it cannot change, and /CPU:0 scopes place the work.
            with contextlib.suppress(RuntimeError):
                tf.config.set_visible_devices([], "GPU")
        if device == "gpu" and not tf.config.get_visible_devices("GPU"):
            # Else TF would place the work on the CPU without a word.
            raise BenchError(
                "--device gpu: a CPU backend earlier in this process hid TensorFlow's GPUs;"
                " run GPU cells in a process of their own (the harness does)"
            )
        self._device_name = "/GPU:0" if device == "gpu" else "/CPU:0"
        self._device = device
        self._options = options
        self._xla = options.xla and not options.parity
        self._cross_entropy = mean_cross_entropy_for(options.parity, device)
        self._dtype = tf.float64 if options.dtype == "float64" else tf.float32
        self._compute = tf.float64 if options.compute_dtype == "float64" else tf.float32

    @staticmethod
    def visible_gpus() -> int:
        return len(tf.config.list_physical_devices("GPU"))

    def environment(self) -> dict[str, str]:
        build = tf.sysconfig.get_build_info()
        env = {
            "framework": "tensorflow",
            "framework_version": tf.__version__,
            "intra_op_threads": str(tf.config.threading.get_intra_op_parallelism_threads()),
            "inter_op_threads": str(tf.config.threading.get_inter_op_parallelism_threads()),
            "deterministic_ops": str(self._options.deterministic).lower(),
            "tf32": str(tf.config.experimental.tensor_float_32_execution_enabled()).lower(),
            "dtype": self._options.dtype,
            "compute_dtype": self._options.compute_dtype,
            "xla": str(self._xla).lower(),
            "grappler": "off" if self._options.parity else "on",
            "dropout_rng": "stateless Philox per (seed, step, layer), 16-bit thresholds",
            # oneDNN changes CPU summation order; TF_ENABLE_ONEDNN_OPTS=0 turns it off.
            "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
            "cuda_version": str(build.get("cuda_version", "none")),
            "cudnn_version": str(build.get("cudnn_version", "none")),
        }
        if self._device == "gpu":
            gpu = tf.config.list_physical_devices("GPU")[0]
            details = tf.config.experimental.get_device_details(gpu)
            env["gpu_model"] = str(details.get("device_name", "unknown"))
            env["gpu_memory_growth"] = str(_memory_growth(gpu)).lower()
        return env

    def load_data(self, splits: Splits) -> None:
        def put(x: np.ndarray, y: np.ndarray) -> tuple[tf.Tensor, tf.Tensor]:
            return tf.constant(x, dtype=self._dtype), tf.constant(y, dtype=tf.int32)

        with tf.device(self._device_name):
            self._train_x, self._train_y = put(splits.train_x, splits.train_y)
            # XLA's gather costs per element: float32 rows gathered as int64 words (two
            # pixels each, the same bits) make a step's batch ~5% of a step cheaper.
            self._train_words = None
            if self._dtype == tf.float32 and splits.train_x.shape[1] % 2 == 0:
                words = np.ascontiguousarray(splits.train_x, dtype=np.float32).view(np.int64)
                self._train_words = tf.constant(words)
            self._eval = eval_splits(splits, put)

    def build(self, spec: StageSpec, run: SeededRun) -> None:
        self._spec = spec
        self._t = 0  # steps taken: Adam's t, and the dropout RNG's counter
        with tf.device(self._device_name):
            self._params = [
                tf.Variable(tf.constant(array, dtype=self._dtype))
                for layer in run.layers
                for array in (layer.weight, layer.bias)
            ]
            self._dropout_seed = tf.constant(run.dropout_seed, dtype=tf.int64)
            if spec.optimizer.name == "adam":
                self._m = [tf.Variable(tf.zeros_like(p)) for p in self._params]
                self._v = [tf.Variable(tf.zeros_like(p)) for p in self._params]
        self._epoch_fn = tf.function(self._epoch, jit_compile=self._xla)
        self._logits_fn = tf.function(lambda x: self._forward(x, None, None))

    def train_epoch(self, order: np.ndarray, masks: Masks = None) -> np.ndarray:
        batch = self._spec.training.batch_size
        steps = len(order) // batch
        step_sizes = self._step_sizes(steps)
        with tf.device(self._device_name):
            losses = self._epoch_fn(
                tf.constant(order[: steps * batch].reshape(steps, batch), dtype=tf.int32),
                tf.constant(step_sizes, dtype=self._dtype),
                tf.constant(self._t, dtype=tf.int64),
                None if masks is None else [tf.constant(m) for m in masks],
            )
        self._t += steps
        return np.asarray(losses.numpy())  # .numpy() waits for the device

    def accuracy(self, split: Split) -> float:
        x, y = self._eval[split]
        correct = 0
        with tf.device(self._device_name):
            for start in range(0, int(x.shape[0]), EVAL_BATCH):
                predicted = self._predict(self._logits_fn(x[start : start + EVAL_BATCH]))
                hits = tf.equal(predicted, y[start : start + EVAL_BATCH])
                correct += int(tf.reduce_sum(tf.cast(hits, tf.int32)))
        return correct / int(x.shape[0])

    def logits(self, x: np.ndarray) -> np.ndarray:
        with tf.device(self._device_name):
            return np.asarray(self._logits_fn(tf.constant(x, dtype=self._dtype)).numpy())

    def parameters(self) -> list[np.ndarray]:
        return [np.asarray(p.numpy()) for p in self._params]

    def matmul_seconds(self, size: int, repeats: int) -> float:
        with tf.device(self._device_name):
            a = tf.random.stateless_uniform([size, size], seed=[1, 2], dtype=tf.float32)
            b = tf.random.stateless_uniform([size, size], seed=[3, 4], dtype=tf.float32)
            tf.matmul(a, b)  # warm-up: kernel selection, thread pool start
            self.synchronize()
            start = time.perf_counter()
            for _ in range(repeats):
                tf.matmul(a, b)
            # No copy of the result to the host (256 MiB at 8192^2 on a GPU, inside the clock):
            # synchronize() waits for the GPU's queue; on a CPU eager ops run synchronously
            # (a 2048^2 product returned after 0.16 s, its copy then took 3 ms).
            self.synchronize()
            return time.perf_counter() - start

    def device_memory_peak_mb(self) -> float | None:
        if self._device != "gpu":
            return None
        return float(tf.config.experimental.get_memory_info("GPU:0")["peak"]) / 2**20

    def synchronize(self) -> None:
        # Host transfers already wait; this waits on anything still queued (GPU streams).
        if self._device == "gpu":
            tf.test.experimental.sync_devices()

    # --- pieces ----------------------------------------------------------------------------

    def _step_sizes(self, steps: int) -> np.ndarray:
        """The learning rate of each step of this epoch (Adam's varies with t)."""
        opt = self._spec.optimizer
        if opt.name == "sgd":
            return np.full(steps, opt.learning_rate)
        assert opt.beta1 is not None and opt.beta2 is not None
        ts = range(self._t + 1, self._t + steps + 1)
        return np.array([adam_step_size(opt.learning_rate, opt.beta1, opt.beta2, t) for t in ts])

    def _forward(
        self,
        x: tf.Tensor,
        keep: list[tf.Tensor] | None,
        key: tf.Tensor | None,
        params: list[tf.Tensor] | None = None,
    ) -> tf.Tensor:
        """Logits; with dropout when given numpy masks (`keep`) or an RNG key (`key`)."""
        rate = self._spec.model.dropout_rate
        params = self._params if params is None else params
        n_layers = len(params) // 2
        h = x
        for i in range(n_layers):
            h = tf.matmul(h, params[2 * i]) + params[2 * i + 1]
            if i == n_layers - 1:
                break
            h = tf.nn.relu(h)
            if rate > 0.0 and (keep is not None or key is not None):
                if keep is not None:
                    mask = keep[i]
                else:
                    assert key is not None
                    # Stateless: the mask depends only on (seed, step, layer): reruns repeat it.
                    mask = self._own_mask(h.shape, tf.stack([self._dropout_seed, key * 16 + i]))
                h = tf.where(mask, h / (1.0 - rate), tf.zeros_like(h))
        return h

    def _batch_x(self, rows: tf.Tensor) -> tf.Tensor:
        if self._train_words is None:
            return tf.gather(self._train_x, rows)
        pairs = tf.bitcast(tf.gather(self._train_words, rows), tf.float32)
        return tf.reshape(pairs, [-1, self._train_x.shape[1]])

    def _own_mask(self, shape: tf.TensorShape, seed: tf.Tensor) -> tf.Tensor:
        """TensorFlow's seeded dropout mask: True where a unit is kept.

        16-bit uniforms from Philox's stream, against a 16-bit threshold (see
        dropout_threshold): a float uniform per unit made dropout cost 1.3x a step here. The
        stream is drawn as 64-bit words: the same bits as 32-bit words (checked, with and
        without XLA), but XLA's CPU code draws 32-bit words 3x slower (97 against 31 ms an
        epoch).
        """
        size = shape.num_elements()
        words = tf.random.stateless_uniform(
            [(size + 3) // 4], seed=seed, minval=None, maxval=None, dtype=tf.uint64
        )
        halves = tf.reshape(tf.bitcast(words, tf.uint16), [-1])[:size]
        threshold = dropout_threshold(self._spec.model.dropout_rate)
        return tf.reshape(halves >= tf.constant(threshold, tf.uint16), shape)

    def _predict(self, logits: tf.Tensor) -> tf.Tensor:
        if self._spec.loss.prediction == "argmax_relu_logits":
            logits = tf.nn.relu(logits)
        return tf.argmax(logits, axis=1, output_type=tf.int32)

    def _epoch(
        self,
        batches: tf.Tensor,
        step_sizes: tf.Tensor,
        first_step: tf.Tensor,
        masks: list[tf.Tensor] | None,
    ) -> tf.Tensor:
        steps = tf.shape(batches)[0]
        losses = tf.TensorArray(self._dtype, size=steps)
        for i in tf.range(steps):
            x = self._batch_x(batches[i])
            y = tf.gather(self._train_y, batches[i])
            keep = None if masks is None else [m[i] for m in masks]
            key = first_step + tf.cast(i, tf.int64) + 1
            with tf.GradientTape() as tape:
                # In compute_dtype; the casts' gradients round back to the parameters' dtype.
                params = [tf.cast(p, self._compute) for p in self._params]
                logits = self._forward(tf.cast(x, self._compute), keep, key, params)
                loss = self._cross_entropy(logits, y)
            self._update(tape.gradient(loss, self._params), step_sizes[i])
            losses = losses.write(i, tf.cast(loss, self._dtype))
        return losses.stack()

    def _update(self, grads: list[tf.Tensor], lr: tf.Tensor) -> None:
        if self._options.parity:
            self._update_explicit(grads, lr)
            return
        opt = self._spec.optimizer
        for i, (p, g) in enumerate(zip(self._params, grads, strict=True)):
            if opt.name == "sgd":
                tf.raw_ops.ResourceApplyGradientDescent(var=p.handle, alpha=lr, delta=g)
            else:
                # TF1's own fused kernel; powers of 0 make its lr_t equal our host lr_t.
                zero = tf.zeros([], self._dtype)
                tf.raw_ops.ResourceApplyAdam(
                    var=p.handle,
                    m=self._m[i].handle,
                    v=self._v[i].handle,
                    beta1_power=zero,
                    beta2_power=zero,
                    lr=lr,
                    beta1=tf.constant(opt.beta1, self._dtype),
                    beta2=tf.constant(opt.beta2, self._dtype),
                    epsilon=tf.constant(opt.epsilon, self._dtype),
                    grad=g,
                )

    def _update_explicit(self, grads: list[tf.Tensor], lr: tf.Tensor) -> None:
        """Written out op by op, in the same order as the PyTorch backend's."""
        opt = self._spec.optimizer
        if opt.name == "sgd":
            for p, g in zip(self._params, grads, strict=True):
                p.assign_sub(lr * g)
            return
        assert opt.beta1 is not None and opt.beta2 is not None and opt.epsilon is not None
        for p, g, m, v in zip(self._params, grads, self._m, self._v, strict=True):
            m.assign(m * opt.beta1 + g * (1.0 - opt.beta1))
            v.assign(v * opt.beta2 + (g * g) * (1.0 - opt.beta2))
            p.assign_sub((m * lr) / (tf.sqrt(v) + opt.epsilon))
