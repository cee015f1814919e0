"""TensorFlow backend: the whole epoch is one compiled tf.function loop on the device."""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

# Quiet TF's C++ start-up banner; errors still show. Must be set before tensorflow is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from backends.base import (
    Backend,
    Masks,
    Runtime,
    Shape,
    State,
    dropout_threshold,
    initial_arrays,
)
from bench.core.data import Splits
from bench.core.errors import BenchError
from bench.core.options import Options
from bench.core.seeding import SeededRun
from bench.core.spec import StageSpec
from bench.core.types import Device, Product

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


def _product_rounds(
    products: tuple[Product, ...], pairs: list[tuple[tf.Tensor, tf.Tensor]], count: tf.Tensor
) -> tf.Tensor:
    """`count` rounds of the products, one after another, in one loop, each operand read
    transposed where the step reads it so. A corner of each product is written into the next
    one's left operand (one element), so that neither XLA nor a graph can hoist the products
    out of the loop, run them side by side (a graph's inter-op pool would) or drop them."""
    corner = tf.constant([[0, 0]])
    link = pairs[-1][0][0, 0]
    for _ in tf.range(count):
        chained = []
        for (a, b), product in zip(pairs, products, strict=True):
            a = tf.tensor_scatter_nd_update(a, corner, tf.reshape(link, [1]))
            transpose_a, transpose_b = product.transposed == "a", product.transposed == "b"
            link = tf.matmul(a, b, transpose_a=transpose_a, transpose_b=transpose_b)[-1, -1]
            chained.append((a, b))
        pairs = chained
    return link


class TensorFlowBackend(Backend):
    name = "tensorflow"

    def __init__(self, device: Device, options: Options) -> None:
        super().__init__(device, options)
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
        self._device = "/GPU:0" if device == "gpu" else "/CPU:0"  # every op runs in its scope
        self._xla = options.xla and not options.parity
        self._cross_entropy = mean_cross_entropy_for(options.parity, device)
        self._dtype = tf.float64 if options.dtype == "float64" else tf.float32
        self._compute = tf.float64 if options.compute_dtype == "float64" else tf.float32

    @staticmethod
    def visible_gpus() -> int:
        return len(tf.config.list_physical_devices("GPU"))

    def load_data(self, splits: Splits) -> None:
        self._train_x = self._put(np.asarray(splits.train_x, self._options.dtype))
        self._train_y = self._put(splits.train_y.astype(np.int32))
        # XLA's gather costs per element: float32 rows gathered as int64 words (two pixels
        # each, the same bits) make a step's batch ~5% of a step cheaper.
        self._train_words = None
        if self._dtype == tf.float32 and splits.train_x.shape[1] % 2 == 0:
            words = np.ascontiguousarray(splits.train_x, dtype=np.float32).view(np.int64)
            self._train_words = self._put(words)
        self._eval = self._eval_batches(splits)

    def build(self, spec: StageSpec, run: SeededRun) -> None:
        self._spec = spec
        self._t = 0
        with tf.device(self._device):
            params = tuple(
                tf.Variable(tf.constant(array, dtype=self._dtype)) for array in initial_arrays(run)
            )
            m: tuple[tf.Variable, ...] = ()
            v: tuple[tf.Variable, ...] = ()
            if spec.optimizer.name == "adam":
                m = tuple(tf.Variable(tf.zeros_like(p)) for p in params)
                v = tuple(tf.Variable(tf.zeros_like(p)) for p in params)
        self._state = State(params, m, v)
        self._rng = self._dropout_rng(run.dropout_seed)
        self._epoch_fn = tf.function(self._epoch, jit_compile=self._xla)
        self._logits_fn = tf.function(lambda x: self._forward(self._state.params, x, None))

    def train_epoch(self, order: np.ndarray, masks: Masks = None) -> np.ndarray:
        batches = self._batches(order)
        steps = len(batches)
        step_sizes = self._step_sizes(steps)
        with tf.device(self._device):
            losses = self._epoch_fn(
                tf.constant(batches, dtype=tf.int32),
                tf.constant(step_sizes, dtype=self._dtype),
                tf.constant(self._t, dtype=tf.int64),
                None if masks is None else [tf.constant(m) for m in masks],
            )
        self._t += steps
        return self._to_host(losses)  # .numpy() waits for the device

    def parameters(self) -> list[np.ndarray]:
        return [self._to_host(p) for p in self._state.params]

    def matmul_seconds(self, size: int, repeats: int) -> float:
        with tf.device(self._device):
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

    def products_seconds(self, products: Sequence[Product], repeats: int) -> float:
        with tf.device(self._device):
            pairs = [
                tuple(
                    tf.random.stateless_uniform(shape, seed=[i, side], dtype=tf.float32)
                    for side, shape in enumerate(product.stored)
                )
                for i, product in enumerate(products)
            ]
            # Compiled as the cells' epochs are: with XLA, or as a TensorFlow graph.
            rounds = tf.function(
                functools.partial(_product_rounds, tuple(products)), jit_compile=self._xla
            )
            count = tf.constant(repeats)
            # Warm-up with the same count: XLA takes the loop's trip count as a constant and
            # compiles again for another one (that compilation timed made 1 ms products 6 ms).
            self._to_host(rounds(pairs, count))
            start = time.perf_counter()
            self._to_host(rounds(pairs, count))  # one loop, as an epoch
            return time.perf_counter() - start

    def device_memory_peak_mb(self) -> float | None:
        if self._device_kind != "gpu":
            return None
        return float(tf.config.experimental.get_memory_info("GPU:0")["peak"]) / 2**20

    def synchronize(self) -> None:
        # Host transfers already wait; this waits on anything still queued (GPU streams).
        if self._device_kind == "gpu":
            tf.test.experimental.sync_devices()

    # --- the mirrored pieces (backends.base lists them) ------------------------------------

    def _runtime(self) -> Runtime:
        build = tf.sysconfig.get_build_info()
        extra = {
            "xla": str(self._xla).lower(),
            "grappler": "off" if self._options.parity else "on",
            # oneDNN changes CPU summation order; TF_ENABLE_ONEDNN_OPTS=0 turns it off.
            "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
        }
        gpu_model = None
        if self._device_kind == "gpu":
            gpu = tf.config.list_physical_devices("GPU")[0]
            details = tf.config.experimental.get_device_details(gpu)
            gpu_model = str(details.get("device_name", "unknown"))
            extra["gpu_memory_growth"] = str(_memory_growth(gpu)).lower()
        return Runtime(
            framework_version=tf.__version__,
            intra_op_threads=str(tf.config.threading.get_intra_op_parallelism_threads()),
            inter_op_threads=str(tf.config.threading.get_inter_op_parallelism_threads()),
            deterministic_ops=self._options.deterministic,
            tf32=bool(tf.config.experimental.tensor_float_32_execution_enabled()),
            dropout_rng="stateless Philox per (seed, step, layer), 16-bit thresholds",
            cuda_version=str(build.get("cuda_version", "none")),
            cudnn_version=str(build.get("cudnn_version", "none")),
            gpu_model=gpu_model,
            extra=extra,
        )

    def _put(self, array: np.ndarray) -> tf.Tensor:
        with tf.device(self._device):
            return tf.constant(array)

    def _dropout_rng(self, seed: int) -> tf.Tensor:
        """The run's dropout seed: with each step's number, it keys stateless Philox draws."""
        with tf.device(self._device):
            return tf.constant(seed, dtype=tf.int64)

    def _epoch(
        self,
        batches: tf.Tensor,
        step_sizes: tf.Tensor,
        first_step: tf.Tensor,
        masks: list[tf.Tensor] | None,
    ) -> tf.Tensor:
        """Every step of an epoch, in one compiled loop; returns the step losses."""
        rate = self._spec.model.dropout_rate
        shapes = self._hidden_shapes()
        steps = tf.shape(batches)[0]
        losses = tf.TensorArray(self._dtype, size=steps)
        for i in tf.range(steps):
            x = self._batch_x(batches[i])
            y = tf.gather(self._train_y, batches[i])
            step_masks = None if masks is None else [m[i] for m in masks]
            if step_masks is None and rate > 0.0:
                step = first_step + tf.cast(i, tf.int64) + 1
                step_masks = self._dropout_masks(self._step_rng(self._rng, step), shapes)
            losses = losses.write(i, self._step(x, y, step_masks, step_sizes[i]))
        return losses.stack()

    def _step(
        self, x: tf.Tensor, y: tf.Tensor, masks: list[tf.Tensor] | None, lr: tf.Tensor
    ) -> tf.Tensor:
        """One training step; its loss, in the parameters' dtype."""
        with tf.GradientTape() as tape:
            loss = self._loss(self._state.params, x, y, masks)
        self._update(self._state, tape.gradient(loss, self._state.params), lr)
        return tf.cast(loss, self._dtype)

    def _loss(
        self,
        params: tuple[tf.Tensor, ...],
        x: tf.Tensor,
        y: tf.Tensor,
        masks: list[tf.Tensor] | None,
    ) -> tf.Tensor:
        """Mean softmax cross-entropy, in compute_dtype (the casts' gradients round back to
        the parameters' dtype)."""
        computed = [tf.cast(p, self._compute) for p in params]
        return self._cross_entropy(self._forward(computed, tf.cast(x, self._compute), masks), y)

    def _forward(
        self, params: Sequence[tf.Tensor], x: tf.Tensor, masks: list[tf.Tensor] | None
    ) -> tf.Tensor:
        """Logits; with dropout where given which units to keep (numpy's or the own masks)."""
        rate = self._spec.model.dropout_rate
        n_layers = len(params) // 2
        h = x
        for i in range(n_layers):
            h = tf.matmul(h, params[2 * i]) + params[2 * i + 1]
            if i == n_layers - 1:
                break
            h = tf.nn.relu(h)
            if rate > 0.0 and masks is not None:
                h = tf.where(masks[i], h / (1.0 - rate), tf.zeros_like(h))
        return h

    def _step_rng(self, rng: tf.Tensor, step: tf.Tensor | int) -> tf.Tensor:
        """Philox's seed pair of one step, (seed, step * 16): layer i draws (seed, step * 16 + i).
        Stateless: a mask depends only on (seed, step, layer), so reruns repeat it."""
        return tf.stack([rng, tf.cast(step, tf.int64) * 16])

    def _dropout_masks(self, rng: tf.Tensor, shapes: list[Shape]) -> list[tf.Tensor]:
        """TensorFlow's seeded dropout masks of one step, a draw per layer: True = kept.

        16-bit uniforms from Philox's stream, against a 16-bit threshold (see
        dropout_threshold): a float uniform per unit made dropout cost 1.3x a step here. The
        stream is drawn as 64-bit words: the same bits as 32-bit words (checked, with and
        without XLA), but XLA's CPU code draws 32-bit words 3x slower (97 against 31 ms an
        epoch).
        """
        threshold = tf.constant(dropout_threshold(self._spec.model.dropout_rate), tf.uint16)
        masks = []
        for layer, shape in enumerate(shapes):
            size = shape[0] * shape[1]
            seed = rng + tf.constant([0, layer], tf.int64)
            words = tf.random.stateless_uniform(
                [(size + 3) // 4], seed=seed, minval=None, maxval=None, dtype=tf.uint64
            )
            halves = tf.reshape(tf.bitcast(words, tf.uint16), [-1])[:size]
            masks.append(tf.reshape(halves >= threshold, shape))
        return masks

    def _update(self, state: State[tf.Variable], grads: Sequence[tf.Tensor], lr: tf.Tensor) -> None:
        """SGD or the TF1 Adam rule, in TensorFlow's fused kernels (op by op in parity)."""
        if self._options.parity:
            self._update_explicit(state, grads, lr)
            return
        opt = self._spec.optimizer
        for i, (p, g) in enumerate(zip(state.params, grads, strict=True)):
            if opt.name == "sgd":
                tf.raw_ops.ResourceApplyGradientDescent(var=p.handle, alpha=lr, delta=g)
            else:
                # TF1's own fused kernel; powers of 0 make its lr_t equal our host lr_t.
                zero = tf.zeros([], self._dtype)
                tf.raw_ops.ResourceApplyAdam(
                    var=p.handle,
                    m=state.m[i].handle,
                    v=state.v[i].handle,
                    beta1_power=zero,
                    beta2_power=zero,
                    lr=lr,
                    beta1=tf.constant(opt.beta1, self._dtype),
                    beta2=tf.constant(opt.beta2, self._dtype),
                    epsilon=tf.constant(opt.epsilon, self._dtype),
                    grad=g,
                )

    def _update_explicit(
        self, state: State[tf.Variable], grads: Sequence[tf.Tensor], lr: tf.Tensor
    ) -> None:
        """Written out op by op, in the same order as the other backends'."""
        opt = self._spec.optimizer
        if opt.name == "sgd":
            for p, g in zip(state.params, grads, strict=True):
                p.assign_sub(lr * g)
            return
        assert opt.beta1 is not None and opt.beta2 is not None and opt.epsilon is not None
        for p, g, m, v in zip(state.params, grads, state.m, state.v, strict=True):
            m.assign(m * opt.beta1 + g * (1.0 - opt.beta1))
            v.assign(v * opt.beta2 + (g * g) * (1.0 - opt.beta2))
            p.assign_sub((m * lr) / (tf.sqrt(v) + opt.epsilon))

    def _logits(self, x: tf.Tensor) -> tf.Tensor:
        with tf.device(self._device):
            return self._logits_fn(x)

    def _predict(self, logits: tf.Tensor) -> tf.Tensor:
        with tf.device(self._device):
            if self._spec.loss.prediction == "argmax_relu_logits":
                logits = tf.nn.relu(logits)
            return tf.argmax(logits, axis=1, output_type=tf.int32)

    def _to_host(self, array: tf.Tensor) -> np.ndarray:
        return np.asarray(array.numpy())

    # --- TensorFlow only -------------------------------------------------------------------

    def _batch_x(self, rows: tf.Tensor) -> tf.Tensor:
        """A batch's inputs: gathered as int64 words where load_data made them."""
        if self._train_words is None:
            return tf.gather(self._train_x, rows)
        pairs = tf.bitcast(tf.gather(self._train_words, rows), tf.float32)
        return tf.reshape(pairs, [-1, self._train_x.shape[1]])
