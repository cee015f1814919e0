"""JAX backend: the whole epoch is one jit-compiled lax.scan on the device."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import pkgutil
import time
from collections.abc import Sequence
from typing import Any, cast

import jax
import jax.extend.random
import jax.numpy as jnp
import numpy as np
from jax import lax
from jaxlib.version import __version__ as jaxlib_version

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

# What the first backend of this process set before JAX's runtime started: XLA reads its flags
# and the CPU client sizes its thread pool once, when the runtime starts (environment() records
# what is in force, as the other backends do for their once-per-process options).
_RUNTIME: dict[str, str] = {}
# jax.config's update() is untyped; reached through Any, it type-checks with or without jax.
_CONFIG: Any = jax.config


def _runtime_started() -> bool:
    from jax._src import xla_bridge  # no public way to ask without starting the runtime

    return bool(xla_bridge.backends_are_initialized())


def configure_runtime(threads: int, options: Options) -> None:
    """Threads and XLA flags, set in the environment before JAX's runtime starts.

    XLA's CPU client sizes its one intra-op pool (Eigen's products and the partitioned
    elementwise loops share it) from NPROC, else from the cores available: with NPROC=1 every
    op ran on the Python thread, with NPROC=2 two pool threads did the work (read from
    /proc/self/task here). XLA has no inter-op pool to size. The Keras reference on JAX
    (keras_reference) sizes its pool here too, so both are measured on the same threads.
    """
    if _RUNTIME or _runtime_started():
        return
    flags = os.environ.get("XLA_FLAGS", "").split()
    if options.deterministic:
        # Scatters and atomics are the GPU's nondeterministic ops; this step has neither (the
        # loss is written with one-hot rows), the flag keeps XLA from choosing one.
        flags.append("--xla_gpu_exclude_nondeterministic_ops=true")
    os.environ["XLA_FLAGS"] = " ".join(flags)
    os.environ["NPROC"] = str(threads)
    # JAX reserves 75% of a GPU's memory when it starts; PyTorch or TensorFlow in the same
    # process (the tests run all three) would then find none.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    _RUNTIME.update(
        intra_op_threads=str(threads),
        xla_flags=os.environ["XLA_FLAGS"],
        gpu_memory_preallocate=os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"],
    )


# XLA's copy insertion with its region analysis of the epoch's loop body: the weights a step
# reads before it updates them in place (the input gradients' products) are then read in
# place; the default kept a copy of them each step (~16 us for the 256x256 one). The same
# numbers to the bit, ~4% (SGD) and ~7% (Adam) less time a step here.
_CPU_COMPILER_OPTIONS: dict[str, Any] = {"xla_cpu_copy_insertion_use_region_analysis": True}


@functools.cache
def _cpu_compiler_options() -> dict[str, Any]:
    """_CPU_COMPILER_OPTIONS, or none where this jaxlib's XLA does not know them (an unknown
    option fails the compilation)."""
    try:
        zero = jax.device_put(np.float32(0.0), jax.devices("cpu")[0])
        jax.jit(jnp.negative, compiler_options=_CPU_COMPILER_OPTIONS)(zero)
    except jax.errors.JaxRuntimeError:
        return {}
    return _CPU_COMPILER_OPTIONS


def _gpu_plugin_installed() -> bool:
    """Whether a JAX GPU plugin is installed (asked without starting JAX's runtime)."""
    if importlib.metadata.entry_points(group="jax_plugins"):
        return True
    try:
        import jax_plugins  # type: ignore[import-not-found]
    except ImportError:
        return False
    return any(True for _ in pkgutil.iter_modules(jax_plugins.__path__))


def _stored(x: jax.Array, zero: jax.Array) -> jax.Array:
    """x rounded to its dtype before the next op reads it.

    XLA's CPU compiler contracts a product that feeds a sum into one FMA (one rounding instead
    of two: 23% of float32 a * b + c differed from numpy's here) and drops optimization
    barriers. An XOR of x's bits with a zero it cannot see through (a runtime argument) keeps
    the product as written, as the other backends' parity updates compute it.
    """
    bits = lax.bitcast_convert_type(x, jnp.uint32)  # float64: a trailing axis of two words
    return lax.bitcast_convert_type(bits ^ zero, x.dtype)


# What an epoch updates (its buffers are donated to the compiled epoch).
_State = State[jax.Array]


Pair = tuple[jax.Array, jax.Array]


def _product_rounds(
    precision: lax.Precision, products: tuple[Product, ...], pairs: list[Pair], count: int
) -> jax.Array:
    """`count` rounds of the products, one after another, in one compiled loop, each operand
    read transposed where the step reads it so (XLA folds that into the dot). A corner of each
    product is written into the next one's left operand (in place: one element), the last
    one's into the next round's first, and the last of all is returned: a chain that XLA can
    neither hoist out of the loop, run side by side nor drop."""

    def one_round(_: jax.Array, carried: tuple[list[Pair], jax.Array]) -> Any:
        pairs, link = carried
        chained = []
        for (a, b), product in zip(pairs, products, strict=True):
            a = a.at[0, 0].set(link)
            left = a.T if product.transposed == "a" else a
            right = b.T if product.transposed == "b" else b
            link = jnp.matmul(left, right, precision=precision)[-1, -1]
            chained.append((a, b))
        return chained, link

    start = jnp.zeros((), jnp.float32)
    _, last = lax.fori_loop(0, count, one_round, (pairs, start))
    return cast(jax.Array, last)


class JaxBackend(Backend):
    name = "jax"

    def __init__(self, device: Device, options: Options) -> None:
        super().__init__(device, options)
        threads = options.threads
        # Process-wide, and before any array is made: without it JAX has no float64. Once on it
        # stays on; every array here has an explicit dtype, so float32 steps are unchanged.
        if "float64" in (options.dtype, options.compute_dtype):
            _CONFIG.update("jax_enable_x64", True)
        configure_runtime(threads, options)
        if device == "gpu" and not JaxBackend.visible_gpus():
            raise BenchError("--device gpu: JAX sees no GPU; use --device cpu")
        # Not hidden from a CPU backend (as TensorFlow's are): every array is placed on this
        # device and the compiled functions run where their inputs are.
        self._device = jax.devices("gpu" if device == "gpu" else "cpu")[0]
        self._dtype = np.dtype(options.dtype)
        self._compute = np.dtype(options.compute_dtype)
        # JAX's GPU products of float32 default to TF32 on Ampere+; "highest" is exact float32.
        self._precision = lax.Precision.DEFAULT if options.tf32 else lax.Precision.HIGHEST

    @staticmethod
    def visible_gpus() -> int:
        if not _gpu_plugin_installed():
            return 0  # a CPU-only jaxlib: no need to start the runtime to know
        try:
            return len(jax.devices("gpu"))
        except RuntimeError:  # no CUDA device, or a driver the plugin cannot use
            return 0

    def load_data(self, splits: Splits) -> None:
        self._train_x = self._put(np.asarray(splits.train_x, self._dtype))
        self._train_y = self._put(splits.train_y.astype(np.int32))
        self._eval = self._eval_batches(splits)

    def build(self, spec: StageSpec, run: SeededRun) -> None:
        self._spec = spec
        self._t = 0
        params = tuple(self._put(array.astype(self._dtype)) for array in initial_arrays(run))
        moments: tuple[jax.Array, ...] = ()
        if spec.optimizer.name == "adam":
            moments = tuple(jnp.zeros_like(p) for p in params)
        self._state = _State(params, moments, tuple(jnp.zeros_like(p) for p in moments))
        self._rng = self._dropout_rng(run.dropout_seed)
        self._zero = self._put(np.zeros((), np.uint32))  # see _stored
        # The state's buffers are donated: each epoch updates the parameters in place.
        self._epoch_fn = jax.jit(
            self._epoch, donate_argnums=0, compiler_options=self._compiler_options()
        )
        self._logits_fn = jax.jit(lambda params, x: self._forward(params, x, None))

    def train_epoch(self, order: np.ndarray, masks: Masks = None) -> np.ndarray:
        batches = self._batches(order)
        steps = len(batches)
        keep = None if masks is None else tuple(self._put(np.asarray(m, bool)) for m in masks)
        self._state, losses = self._epoch_fn(
            self._state,
            self._train_x,
            self._train_y,
            self._put(batches.astype(np.int32)),
            self._put(self._step_sizes(steps).astype(self._dtype)),
            self._put(np.uint32(self._t)),
            keep,
            self._rng,
            self._zero,
        )
        self._t += steps
        return self._to_host(losses)  # the copy to host waits for the device

    def parameters(self) -> list[np.ndarray]:
        # Copies: the next epoch donates (overwrites) the device buffers these would view.
        return [np.array(p, copy=True) for p in self._state.params]

    def matmul_seconds(self, size: int, repeats: int) -> float:
        with jax.default_device(self._device):
            a, b = jax.random.uniform(jax.random.key(1), (2, size, size), jnp.float32)
        square = jax.jit(lambda a, b: jnp.matmul(a, b, precision=self._precision))
        square(a, b).block_until_ready()  # warm-up: compilation, thread pool start
        start = time.perf_counter()
        for _ in range(repeats):
            product = square(a, b)
            if self._device_kind == "cpu":
                # Dispatch is asynchronous: queued products of one CPU could overlap, where a
                # GPU's stream runs them one after another.
                product.block_until_ready()
        product.block_until_ready()
        return time.perf_counter() - start

    def products_seconds(self, products: Sequence[Product], repeats: int) -> float:
        keys = iter(jax.random.split(jax.random.key(1), 2 * len(products)))
        with jax.default_device(self._device):
            pairs = [
                (
                    jax.random.uniform(next(keys), product.stored[0], jnp.float32),
                    jax.random.uniform(next(keys), product.stored[1], jnp.float32),
                )
                for product in products
            ]
        rounds = jax.jit(functools.partial(_product_rounds, self._precision, tuple(products)))
        # Warm-up (compilation, thread pool start): one round, as the count is traced and
        # every count runs the same executable.
        jax.block_until_ready(rounds(pairs, 1))
        start = time.perf_counter()
        jax.block_until_ready(rounds(pairs, repeats))  # one loop on the device, as an epoch
        return time.perf_counter() - start

    def device_memory_peak_mb(self) -> float | None:
        if self._device_kind != "gpu":
            return None
        stats = self._device.memory_stats() or {}
        return float(stats.get("peak_bytes_in_use", 0)) / 2**20

    def synchronize(self) -> None:
        # Every queued epoch writes the state: its buffers are ready when the device is done.
        if hasattr(self, "_state"):
            for array in jax.tree.leaves(self._state):
                array.block_until_ready()

    # --- the mirrored pieces (backends.base lists them) ------------------------------------

    def _runtime(self) -> Runtime:
        extra = {
            "jaxlib_version": jaxlib_version,
            "xla": "true",  # JAX compiles every step with XLA
            "xla_flags": _RUNTIME.get("xla_flags", os.environ.get("XLA_FLAGS", "")),
            "xla_compiler_options": " ".join(
                f"{name}={str(value).lower()}" for name, value in self._compiler_options().items()
            ),
            "jax_enable_x64": str(_CONFIG.jax_enable_x64).lower(),
            "matmul_precision": str(self._precision.name).lower(),
            # XLA's CPU executables run with subnormals flushed (1e-9 * 1e-30 gave 0 here), as
            # TensorFlow's CPU threads and the torch backend do.
            "flush_denormal": str(self._device_kind == "cpu").lower(),
        }
        cuda_version, gpu_model = "none", None
        if self._device_kind == "gpu":
            cuda_version = str(self._device.client.platform_version)
            gpu_model = str(self._device.device_kind)
            extra["gpu_memory_preallocate"] = _RUNTIME.get(
                "gpu_memory_preallocate", os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", "true")
            )
        return Runtime(
            framework_version=jax.__version__,
            intra_op_threads=_RUNTIME.get(
                "intra_op_threads", os.environ.get("NPROC", "default (runtime started earlier)")
            ),
            inter_op_threads="n/a (XLA: one pool)",
            deterministic_ops=self._options.deterministic,
            tf32=self._options.tf32,
            dropout_rng="threefry2x32 on counters, one key per (seed, step), 16-bit thresholds",
            cuda_version=cuda_version,
            cudnn_version="none",
            gpu_model=gpu_model,
            extra=extra,
        )

    def _compiler_options(self) -> dict[str, Any]:
        """The epoch's own XLA options (a CPU's only)."""
        return _cpu_compiler_options() if self._device_kind == "cpu" else {}

    def _put(self, array: np.ndarray | np.generic) -> jax.Array:
        placed: jax.Array = jax.device_put(array, self._device)
        return placed

    def _dropout_rng(self, seed: int) -> jax.Array:
        """The run's dropout key: each step's is folded in from it."""
        with jax.default_device(self._device):
            key: jax.Array = jax.random.key(seed)
        return key

    def _epoch(
        self,
        state: _State,
        train_x: jax.Array,
        train_y: jax.Array,
        batches: jax.Array,
        step_sizes: jax.Array,
        first_step: jax.Array,
        masks: tuple[jax.Array, ...] | None,
        rng: jax.Array,
        zero: jax.Array,
    ) -> tuple[_State, jax.Array]:
        """Every step of an epoch, in one compiled loop; returns the state and step losses."""
        rate = self._spec.model.dropout_rate
        shapes = self._hidden_shapes()

        def body(state: _State, inputs: Any) -> tuple[_State, jax.Array]:
            i, rows, lr, given = inputs
            # The harness's orders are permutations of the training rows: no bounds checks.
            x = train_x.at[rows].get(mode="promise_in_bounds")
            y = train_y.at[rows].get(mode="promise_in_bounds")
            step_masks = None if given is None else list(given)
            if step_masks is None and rate > 0.0:
                step = first_step + i + 1
                step_masks = self._dropout_masks(self._step_rng(rng, step), shapes)
            return self._step(state, x, y, step_masks, lr, zero)

        steps = batches.shape[0]
        inputs = (jnp.arange(steps, dtype=jnp.uint32), batches, step_sizes, masks)
        state, losses = lax.scan(body, state, inputs)
        return state, losses

    def _step(
        self,
        state: _State,
        x: jax.Array,
        y: jax.Array,
        masks: list[jax.Array] | None,
        lr: jax.Array,
        zero: jax.Array,
    ) -> tuple[_State, jax.Array]:
        """One training step; the new state and its loss, in the parameters' dtype."""
        loss, grads = jax.value_and_grad(self._loss)(state.params, x, y, masks)
        return self._update(state, grads, lr, zero), loss.astype(self._dtype)

    def _loss(
        self,
        params: tuple[jax.Array, ...],
        x: jax.Array,
        y: jax.Array,
        masks: list[jax.Array] | None,
    ) -> jax.Array:
        """Mean softmax cross-entropy, in compute_dtype (the casts' gradients round back to the
        parameters' dtype, as in the other backends). One-hot rows instead of a gather of each
        row's label: its gradient would be a scatter-add, nondeterministic on GPUs."""
        computed = tuple(p.astype(self._compute) for p in params)
        logits = self._forward(computed, x.astype(self._compute), masks)
        log_probs = jax.nn.log_softmax(logits)
        onehot = jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype)
        return -jnp.mean(jnp.sum(onehot * log_probs, axis=1))

    def _forward(
        self, params: tuple[jax.Array, ...], x: jax.Array, masks: list[jax.Array] | None
    ) -> jax.Array:
        """Logits; with dropout where given which units to keep (numpy's or the own masks)."""
        rate = self._spec.model.dropout_rate
        n_layers = len(params) // 2
        h = x
        for i in range(n_layers):
            h = jnp.matmul(h, params[2 * i], precision=self._precision) + params[2 * i + 1]
            if i == n_layers - 1:
                break
            h = jax.nn.relu(h)  # its gradient at 0 is 0, as TensorFlow's and PyTorch's
            if rate > 0.0 and masks is not None:  # as TensorFlow writes it
                h = jnp.where(masks[i], h / (1.0 - rate), jnp.zeros_like(h))
        return h

    def _step_rng(self, rng: jax.Array, step: jax.Array | int) -> jax.Array:
        """One step's key. A mask depends only on (seed, step): reruns repeat it, whatever
        the epochs."""
        key: jax.Array = jax.random.fold_in(rng, step)
        return key

    def _dropout_masks(self, rng: jax.Array, shapes: list[Shape]) -> list[jax.Array]:
        """JAX's seeded dropout masks of one step, every layer in one draw: True = kept.

        16-bit uniforms against dropout_threshold, four per threefry block: the hash of the
        step's key on counters 0, 1, ..., two 32-bit words a block. jax.random.bits spends a
        whole block on each value it returns, whatever its width: twice the hashing, ~10 us a
        step more here.
        """
        sizes = [rows * cols for rows, cols in shapes]
        counters = lax.iota(jnp.uint32, (sum(sizes) + 1) // 2)
        words = jax.extend.random.threefry_2x32(jax.random.key_data(rng), counters)
        halves = lax.bitcast_convert_type(words, jnp.uint16).reshape(-1)
        keep = halves >= jnp.uint16(dropout_threshold(self._spec.model.dropout_rate))
        masks, start = [], 0
        for size, shape in zip(sizes, shapes, strict=True):
            masks.append(keep[start : start + size].reshape(shape))
            start += size
        return masks

    def _update(
        self, state: _State, grads: tuple[jax.Array, ...], lr: jax.Array, zero: jax.Array
    ) -> _State:
        """SGD or the TF1 Adam rule (op by op in parity mode); the new state. `zero` is a
        runtime zero that only the parity update needs (see _stored)."""
        if self._options.parity:
            return self._update_explicit(state, grads, lr, zero)
        opt = self._spec.optimizer
        if opt.name == "sgd":
            return state._replace(
                params=tuple(p - lr * g for p, g in zip(state.params, grads, strict=True))
            )
        assert opt.beta1 is not None and opt.beta2 is not None and opt.epsilon is not None
        # The TF1 rule; XLA fuses each parameter's update into one loop (with FMAs).
        m = tuple(
            opt.beta1 * m + (1.0 - opt.beta1) * g for m, g in zip(state.m, grads, strict=True)
        )
        v = tuple(
            opt.beta2 * v + (1.0 - opt.beta2) * g * g for v, g in zip(state.v, grads, strict=True)
        )
        params = tuple(
            p - lr * m / (jnp.sqrt(v) + opt.epsilon)
            for p, m, v in zip(state.params, m, v, strict=True)
        )
        return _State(params, m, v)

    def _update_explicit(
        self, state: _State, grads: tuple[jax.Array, ...], lr: jax.Array, zero: jax.Array
    ) -> _State:
        """Written out op by op, in the same order as the other backends' (products kept apart
        from the sums they feed: see _stored)."""
        opt = self._spec.optimizer
        if opt.name == "sgd":
            params = tuple(
                p - _stored(lr * g, zero) for p, g in zip(state.params, grads, strict=True)
            )
            return state._replace(params=params)
        assert opt.beta1 is not None and opt.beta2 is not None and opt.epsilon is not None
        new_params, new_m, new_v = [], [], []
        for p, g, m, v in zip(state.params, grads, state.m, state.v, strict=True):
            m = _stored(m * opt.beta1, zero) + _stored(g * (1.0 - opt.beta1), zero)
            v = _stored(v * opt.beta2, zero) + _stored((g * g) * (1.0 - opt.beta2), zero)
            new_params.append(p - (m * lr) / (jnp.sqrt(v) + opt.epsilon))
            new_m.append(m)
            new_v.append(v)
        return _State(tuple(new_params), tuple(new_m), tuple(new_v))

    def _logits(self, x: jax.Array) -> jax.Array:
        logits: jax.Array = self._logits_fn(self._state.params, x)
        return logits

    def _predict(self, logits: jax.Array) -> jax.Array:
        if self._spec.loss.prediction == "argmax_relu_logits":
            logits = jax.nn.relu(logits)
        return jnp.argmax(logits, axis=1).astype(jnp.int32)

    def _to_host(self, array: jax.Array) -> np.ndarray:
        return np.asarray(array)
