"""PyTorch backend: data on the device, a plain loop per epoch, losses kept on the device.

Its products' library (products, matmul_tuner) and the CUDA-graph replay of its step
(cuda_graphs) are modules of their own beside it."""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from backends.base import (
    Backend,
    Masks,
    Runtime,
    Shape,
    State,
    dropout_threshold,
    initial_arrays,
)
from backends.torch.cuda_graphs import GraphedStep, check_cuda_graphs, graphed
from backends.torch.matmul_tuner import resolve_matmul
from backends.torch.products import (
    MklProducts,
    OneDnnProducts,
    Products,
    products_round,
    stored_operands,
)
from bench.core.data import Splits
from bench.core.devices import gpu_driver_version
from bench.core.errors import BenchError
from bench.core.options import Options
from bench.core.seeding import SeededRun
from bench.core.spec import StageSpec
from bench.core.types import Device, Product


def _views(flat: torch.Tensor, like: list[np.ndarray]) -> list[torch.Tensor]:
    """Consecutive views of `flat` shaped like the given arrays."""
    views, start = [], 0
    for array in like:
        views.append(flat[start : start + array.size].view(array.shape))
        start += array.size
    return views


# The generator of the own dropout masks: numpy's PCG64 on the CPU, whose 64-bit words cost
# about half of torch.Generator's Mersenne Twister there (~20 against ~38 us for one step's
# 12,800 words, the dropout cell ~15 us a step faster); a GPU's torch.Generator (Philox) draws
# on the device and inside a CUDA graph.
DropoutRng = torch.Generator | np.random.PCG64
_DROPOUT_RNGS = {
    "cpu": "numpy PCG64, four 16-bit uniforms a 64-bit word",
    "cuda": "torch.Generator (Philox4x32-10), four 16-bit uniforms a 64-bit word",
}

# A step count at which 1 - beta**step is exactly 1 in double precision for any beta < 0.99999.
_NO_BIAS_CORRECTION = 1e9

# The training steps whose input rows one gather fetches (see _step_inputs): ~3 MB at MNIST's
# shapes, where the gain of larger gathers levels off.
_GATHER_STEPS = 10


# The training steps whose dropout masks one draw makes on a CPU (see _MaskBlock): the
# per-op overheads of a step's five small passes are shared, and passes of several steps' masks
# are large enough to run on every thread; five steps' masks cost ~35 us a step where one
# step's cost ~55 us here.
_MASK_STEPS_CPU = 5

# Elements per intra-op thread in _every_thread_flushes' probe: twice PyTorch's grain for a
# parallel element-wise op (32,768), so that every thread computes a share.
_FLUSH_PROBE_ELEMENTS = 65536


class _MaskBlock:
    """The memory the own dropout masks of `steps` steps are drawn into at once, for one
    generator and one set of shapes, allocated once: the random words, and each step's masks
    as views of one flat tensor. Each step takes the same number of words, the ones it would
    have drawn alone, so the masks do not depend on `steps`."""

    def __init__(
        self,
        rng: DropoutRng,
        shapes: list[Shape],
        steps: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        sizes = [rows * cols for rows, cols in shapes]
        self.rng = rng
        self.words = steps * ((sum(sizes) + 3) // 4)  # four 16-bit uniforms each
        # torch's generator draws into a tensor; numpy's returns its words.
        self.bits = (
            torch.empty(self.words, dtype=torch.int64, device=device)
            if isinstance(rng, torch.Generator)
            else None
        )
        self.flat = torch.empty(self.words * 4, dtype=dtype, device=device)
        self.masks = [
            [part.view(shape) for part, shape in zip(torch.split(row, sizes), shapes, strict=True)]
            for row in self.flat.view(steps, -1)[:, : sum(sizes)]
        ]
        self.used = steps  # none drawn yet


def _augmented(flat: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    """Each layer's weights with its bias as a last row, (fan_in + 1, fan_out): views of `flat`,
    in which every layer's weights are followed by its bias."""
    views, start = [], 0
    for fan_in, fan_out in itertools.pairwise(sizes):
        size = (fan_in + 1) * fan_out
        views.append(flat[start : start + size].view(fan_in + 1, fan_out))
        start += size
    return views


def _every_thread_flushes() -> bool:
    """Whether every intra-op thread flushes subnormal results to zero. torch.set_flush_denormal
    sets the calling thread's flags, which a thread inherits when it starts: pool threads that
    earlier parallel work in the process started keep subnormals, and so compute their share of
    a product or update unlike the others (and, where Adam's moments of gradients that have
    turned 0 decay into subnormals, ~100x slower). A probe that does start the pool starts it
    with the flags set."""
    elements = torch.get_num_threads() * _FLUSH_PROBE_ELEMENTS
    return not bool((torch.full((elements,), 1e-30) * 1e-10).any())


class _FastLayers:
    """The fast step's view of the model and its working memory, allocated once: the layers'
    augmented weights and gradients (see _augmented), each hidden layer's output beside a
    column of ones (the next layer's augmented input, as the data's rows carry one), the
    logits, and each hidden layer's input gradient. No step allocates."""

    def __init__(
        self, flat: torch.Tensor, flat_grad: torch.Tensor, sizes: Sequence[int], batch: int
    ) -> None:
        self.weights, self.grads = _augmented(flat, sizes), _augmented(flat_grad, sizes)
        hidden = sizes[1:-1]
        self.inputs = [flat.new_ones((batch, units + 1)) for units in hidden]
        self.outputs = [h[:, :-1] for h in self.inputs]  # without the ones: strided views
        self.logits = flat.new_empty((batch, sizes[-1]))
        self.input_grads = [flat.new_empty((batch, units)) for units in hidden]


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, device: Device, options: Options) -> None:
        super().__init__(device, options)
        threads = options.threads
        torch.set_num_threads(threads)
        # Settable once per process only; a second backend in one process keeps the first's
        # (environment() records what is in force).
        if torch.get_num_interop_threads() != options.inter_op_threads:
            with contextlib.suppress(RuntimeError):
                torch.set_num_interop_threads(options.inter_op_threads)
        if device == "gpu" and not torch.cuda.is_available():
            raise BenchError("--device gpu: PyTorch sees no CUDA GPU; use --device cpu")
        check_cuda_graphs(options, device)
        if options.deterministic:
            # cuBLAS needs a fixed workspace to be deterministic; set before CUDA starts.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(options.deterministic)
        # Deterministic mode also fills each new tensor with NaN, a debugging aid against
        # reading uninitialised memory, which cost ~2% here. No step reads such memory: with
        # the fill on, every stage's numbers were finite and bit-identical to these.
        torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
        # Flush subnormals to zero, as TensorFlow's CPU threads do: Adam's g * g underflows into
        # subnormals, which x86 computes ~100x slower; flushing also keeps the two frameworks'
        # numbers alike. It sets the CPU's own flags: CUDA kernels keep subnormals regardless.
        self._flush_denormal = torch.set_flush_denormal(True) and device == "cpu"
        if self._flush_denormal and not _every_thread_flushes():
            raise BenchError(
                "PyTorch's worker threads started before the torch backend set them to flush "
                "subnormals to zero, and would compute their share of each step with them; "
                "create the backend before any other PyTorch work in the process, as each "
                "cell of `mlp-bench run` does"
            )
        torch.backends.cuda.matmul.allow_tf32 = options.tf32
        torch.backends.cudnn.allow_tf32 = options.tf32
        self._device = torch.device("cuda" if device == "gpu" else "cpu")
        self._dtype = torch.float64 if options.dtype == "float64" else torch.float32
        self._compute = torch.float64 if options.compute_dtype == "float64" else torch.float32
        self._matmul, self._matmul_reason = resolve_matmul(options, device, threads)
        self._mm: Products = OneDnnProducts() if self._matmul == "onednn" else MklProducts()

    @staticmethod
    def visible_gpus() -> int:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    def load_data(self, splits: Splits) -> None:
        train_x = np.asarray(splits.train_x, self._options.dtype)
        if not self._options.parity:  # the fast step's rows carry a one for the bias row
            train_x = np.hstack([train_x, np.ones((len(train_x), 1), train_x.dtype)])
        self._train_x = self._put(train_x)
        self._gathered: torch.Tensor | None = None  # _step_inputs' buffer
        self._train_y = self._put(splits.train_y)
        self._eval = self._eval_batches(splits)

    def build(self, spec: StageSpec, run: SeededRun) -> None:
        self._spec = spec
        self._t = 0
        arrays = initial_arrays(run)
        adam = spec.optimizer.name == "adam"
        if self._options.parity:  # autograd leaves, one tensor each
            self._params = [
                torch.tensor(a, device=self._device, dtype=self._dtype, requires_grad=True)
                for a in arrays
            ]
            moments = tuple(torch.zeros_like(p) for p in self._params) if adam else ()
            self._state = State(
                tuple(self._params), moments, tuple(torch.zeros_like(m) for m in moments)
            )
        else:
            # Views into one flat buffer (and so the gradients and Adam's m and v): each
            # optimizer op is then one large multithreaded kernel instead of six small ones.
            flat = torch.cat([torch.from_numpy(a).reshape(-1) for a in arrays])
            flat = flat.to(self._device, self._dtype)
            self._params = _views(flat, arrays)
            self._flat_grad = torch.zeros_like(flat)
            self._layers = _FastLayers(
                flat, self._flat_grad, spec.model.layer_sizes, spec.training.batch_size
            )
            moments = (torch.zeros_like(flat),) if adam else ()
            self._state = State((flat,), moments, tuple(torch.zeros_like(m) for m in moments))
            if adam:
                # The fused kernel divides by 1 - beta^step; a step this large makes both
                # corrections exactly 1, so it applies the TF1 rule with our own lr_t and eps.
                self._fused_step = torch.tensor(
                    _NO_BIAS_CORRECTION, dtype=torch.float32, device=self._device
                )
        # _alphas[i] scales the gradient with respect to layer i's input in the fast step:
        # 1 / keep for a hidden layer's dropped-out output (1 without dropout).
        rate = spec.model.dropout_rate
        keep_prob = 1.0 - rate
        self._kept_factor = 1.0 / keep_prob  # a kept unit's, in its mask
        self._alphas = [1.0] + [self._kept_factor] * (len(spec.model.layer_sizes) - 2)
        # A tensor, not a Python float, so that it is rounded to the dtype as in TensorFlow.
        self._keep_scale = torch.tensor(keep_prob, dtype=self._compute, device=self._device)
        self._classes = torch.arange(spec.model.layer_sizes[-1], device=self._device)
        self._rng = self._dropout_rng(run.dropout_seed)
        self._mask_blocks: dict[tuple[int, tuple[Shape, ...]], _MaskBlock] = {}
        shapes = self._hidden_shapes()
        if rate > 0.0:  # allocated before a CUDA graph captures the draws into them
            self._mask_block(self._rng, shapes)
        self._graphs = None
        if self._options.cuda_graphs:
            assert isinstance(self._rng, torch.Generator)  # a GPU's (check_cuda_graphs)
            draw = None
            if rate > 0.0:  # a draw is part of the captured step: each replay draws anew
                draw = functools.partial(self._dropout_masks, self._rng, shapes)
            self._graphs = GraphedStep(
                self._step_fast,
                draw,
                self._train_x,
                self._train_y,
                spec.training.batch_size,
                self._rng if rate > 0.0 else None,
                adam,
            )

    def train_epoch(self, order: np.ndarray, masks: Masks = None) -> np.ndarray:
        batches = self._batches(order)
        steps = len(batches)
        losses = self._epoch(
            self._put(batches),
            self._step_sizes(steps),
            None if masks is None else [self._put(m) for m in masks],
        )
        self._t += steps
        return self._to_host(losses)  # the copy to host waits for the device

    def parameters(self) -> list[np.ndarray]:
        return [self._to_host(p).copy() for p in self._params]

    def matmul_seconds(self, size: int, repeats: int) -> float:
        generator = torch.Generator(device=self._device).manual_seed(1)
        a, b = (torch.rand(size, size, device=self._device, generator=generator) for _ in range(2))
        return self._seconds(functools.partial(self._mm.square, a, b), repeats)

    def products_seconds(self, products: Sequence[Product], repeats: int) -> float:
        one_round = products_round(self._mm, stored_operands(products, self._device))
        replay = graphed(one_round) if self._options.cuda_graphs else one_round
        return self._seconds(replay, repeats)

    def _seconds(self, work: Callable[[], object], repeats: int) -> float:
        """`repeats` runs of `work` after one warm-up run (kernel selection, thread pool
        start), synchronised before the clock is read each time."""
        work()
        self.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            work()
        self.synchronize()
        return time.perf_counter() - start

    def device_memory_peak_mb(self) -> float | None:
        if self._device_kind != "gpu":
            return None
        return torch.cuda.max_memory_allocated(self._device) / 2**20

    def synchronize(self) -> None:
        if self._device_kind == "gpu":
            torch.cuda.synchronize(self._device)

    # --- the mirrored pieces (backends.base lists them) ------------------------------------

    def _runtime(self) -> Runtime:
        blas = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
        extra = {
            "fill_uninitialized_memory": str(
                torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
            ).lower(),
            "framework_blas": blas.group(1) if blas else "unknown",
            # The library the fast step's products went through, and why (--torch-matmul).
            "torch_matmul": self._matmul,
            "torch_matmul_reason": self._matmul_reason,
            "flush_denormal": str(self._flush_denormal).lower(),
            "cuda_graphs": str(self._options.cuda_graphs).lower(),
            "mkldnn": str(torch.backends.mkldnn.is_available()).lower(),  # type: ignore[no-untyped-call]
        }
        gpu_model = None
        if self._device_kind == "gpu":
            gpu_model = torch.cuda.get_device_name(self._device)
            extra["gpu_driver"] = gpu_driver_version()
        return Runtime(
            framework_version=torch.__version__,
            intra_op_threads=str(torch.get_num_threads()),
            inter_op_threads=str(torch.get_num_interop_threads()),
            deterministic_ops=torch.are_deterministic_algorithms_enabled(),
            tf32=torch.backends.cuda.matmul.allow_tf32,
            # The device's own generator draws the masks: CUDA's is Philox4x32-10.
            dropout_rng=f"{_DROPOUT_RNGS[self._device.type]}, 16-bit thresholds",
            cuda_version=str(torch.version.cuda or "none"),
            cudnn_version=str(torch.backends.cudnn.version() or "none"),  # type: ignore[no-untyped-call]
            gpu_model=gpu_model,
            extra=extra,
        )

    def _put(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(array).to(self._device)

    def _dropout_rng(self, seed: int) -> DropoutRng:
        """The device's dropout generator (see DropoutRng), seeded: every draw moves it on (see
        _step_rng)."""
        if self._device.type == "cpu":
            return np.random.PCG64(seed)
        generator = torch.Generator(device=self._device)
        generator.manual_seed(seed)
        return generator

    def _epoch(
        self, batches: torch.Tensor, step_sizes: np.ndarray, masks: list[torch.Tensor] | None
    ) -> torch.Tensor:
        """Every step of an epoch, a Python loop (or CUDA graph replays); the step losses,
        kept on the device: no host sync per step."""
        steps, batch = batches.shape
        if self._graphs is not None:
            losses = torch.empty(steps, device=self._device, dtype=self._dtype)
            for i in range(steps):
                losses[i] = self._graphs.step(batches[i], float(step_sizes[i]))
            return losses
        rate = self._spec.model.dropout_rate
        shapes = self._hidden_shapes()
        # Per epoch rather than per step (a few small ops fewer each step): the labels, the
        # fast step's loss-gradient targets, and each step's views of them (unbind: one op).
        labels = self._train_y.index_select(0, batches.view(-1)).view(steps, batch)
        fast = not self._options.parity
        targets = self._targets(labels).unbind(0) if fast else None
        step_labels = labels.unbind(0)
        step_losses = []
        for i, x in enumerate(self._step_inputs(batches)):
            step_masks = None if masks is None else [m[i] for m in masks]
            if step_masks is None and rate > 0.0:
                step = self._t + i + 1
                step_masks = self._dropout_masks(self._step_rng(self._rng, step), shapes)
            lr = float(step_sizes[i])
            if targets is not None:
                step_losses.append(self._step_fast(x, step_labels[i], step_masks, lr, targets[i]))
            else:
                step_losses.append(self._step(x, step_labels[i], step_masks, lr))
        return torch.stack(step_losses)

    def _step_inputs(self, batches: torch.Tensor) -> Iterator[torch.Tensor]:
        """Each step's input rows, gathered _GATHER_STEPS steps at a time into one buffer: one
        gather of the rows of several steps keeps more of their memory reads in flight than a
        gather per step, ~10 us a step less here. A step's rows are overwritten
        _GATHER_STEPS steps later, after the step is done with them."""
        steps, batch = batches.shape
        features = self._train_x.shape[1]
        if self._gathered is None or self._gathered.shape[1:] != (batch, features):
            self._gathered = self._train_x.new_empty((_GATHER_STEPS, batch, features))
        for start in range(0, steps, _GATHER_STEPS):
            rows = batches[start : start + _GATHER_STEPS]
            chunk = self._gathered[: len(rows)]
            torch.index_select(self._train_x, 0, rows.reshape(-1), out=chunk.view(-1, features))
            yield from chunk.unbind(0)

    def _targets(self, labels: torch.Tensor) -> torch.Tensor:
        """-onehot / batch for each label: the gradient of the mean cross-entropy with respect
        to the log-probabilities, which _step_fast turns into (softmax - onehot) / batch."""
        onehot = (labels.unsqueeze(-1) == self._classes).to(self._dtype)
        return onehot.mul_(-1.0 / labels.shape[-1])

    def _step(
        self, x: torch.Tensor, y: torch.Tensor, masks: list[torch.Tensor] | None, lr: float
    ) -> torch.Tensor:
        """One training step with autograd (parity mode; _step_fast otherwise); its loss."""
        loss = self._loss(self._state.params, x, y, masks)
        grads = torch.autograd.grad(loss, self._state.params)
        with torch.no_grad():
            self._update(self._state, grads, lr)
        return loss.detach().to(self._dtype)

    def _loss(
        self,
        params: Sequence[torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        masks: list[torch.Tensor] | None,
    ) -> torch.Tensor:
        """Mean softmax cross-entropy, in compute_dtype (the casts' gradients round back to
        the parameters' dtype, as in the other backends)."""
        computed = [p.to(self._compute) for p in params]
        return F.cross_entropy(self._forward(computed, x.to(self._compute), masks), y)

    def _forward(
        self, params: Sequence[torch.Tensor], x: torch.Tensor, masks: list[torch.Tensor] | None
    ) -> torch.Tensor:
        """Logits; with dropout where given which units to keep (numpy's or the own masks)."""
        rate = self._spec.model.dropout_rate
        n_layers = len(params) // 2
        h = x
        for i in range(n_layers):
            h = torch.addmm(params[2 * i + 1], h, params[2 * i])
            if i == n_layers - 1:
                break
            h = torch.relu(h)
            if rate > 0.0 and masks is not None:
                if masks[i].dtype == torch.bool:  # numpy's, applied as TensorFlow writes it
                    h = torch.where(masks[i], h / self._keep_scale, torch.zeros_like(h))
                else:  # the own masks, 0/1 factors
                    h = h * masks[i][: len(h)] / self._keep_scale
        return h

    def _step_rng(self, rng: DropoutRng, step: int) -> DropoutRng:
        """The generator itself: it is stateful, each step's draw moves it on to the next
        step's (a CUDA graph's replays too), so `step` picks nothing here."""
        return rng

    def _dropout_masks(self, rng: DropoutRng, shapes: list[Shape]) -> list[torch.Tensor]:
        """The own seeded dropout masks of one step, every layer in one draw: factors, 0 for a
        dropped unit, 1 / keep for a kept one.

        torch.rand costs ~3.3 ns per element on CPU (one 32-bit Mersenne Twister draw each);
        here each 64-bit word gives four 16-bit uniforms, compared against dropout_threshold,
        so a step's masks cost about a third. On a CPU the masks of several steps are drawn at
        once (see _MaskBlock); a GPU draws each step's, inside its CUDA graph. The masks are
        views of buffers a later draw overwrites.
        """
        block = self._mask_block(rng, shapes)
        if block.used == len(block.masks):
            self._draw(block)
            block.used = 0
        block.used += 1
        return block.masks[block.used - 1]

    def _mask_block(self, rng: DropoutRng, shapes: list[Shape]) -> _MaskBlock:
        key = (id(rng), tuple(shapes))  # the block holds rng: its id stays its own
        block = self._mask_blocks.get(key)
        if block is None:
            steps = _MASK_STEPS_CPU if isinstance(rng, np.random.PCG64) else 1
            block = _MaskBlock(rng, shapes, steps, self._device, self._dtype)
            self._mask_blocks[key] = block
        return block

    def _draw(self, block: _MaskBlock) -> None:
        """The next masks of every step of `block`, from its generator."""
        if isinstance(block.rng, np.random.PCG64):
            bits = torch.from_numpy(block.rng.random_raw(block.words).view(np.int16))
        else:
            assert block.bits is not None
            # from=-2**63, to=None: the full 64-bit range (plain random_() leaves the sign bit 0).
            block.bits.random_(-(2**63), None, generator=block.rng)
            bits = block.bits.view(torch.int16)
        block.flat.copy_(bits)
        # As signed 16-bit values u in [-32768, 32767], a unit is kept when u + 32768 >=
        # threshold, i.e. when u + 32769 - threshold >= 1; dropped ones give <= 0: clamp to 0/1.
        offset = float(32769 - dropout_threshold(self._spec.model.dropout_rate))
        block.flat.add_(offset).clamp_(0.0, 1.0)
        # The kept units' scale is the masks', not the products' alpha: that would scale the
        # next layer's bias row too.
        block.flat.mul_(self._kept_factor)

    def _update(
        self,
        state: State[torch.Tensor],
        grads: Sequence[torch.Tensor],
        lr: float | torch.Tensor,
    ) -> None:
        """SGD or the TF1 Adam rule (op by op in parity mode). Outside parity SGD never comes
        here, _step_fast folds it into the weight-gradient products; Adam runs PyTorch's fused
        (one-pass) kernel over the flat buffers. With its bias corrections made exactly 1 (see
        build), the kernel computes p -= lr * m / (sqrt(v) + eps): the TF1 rule when lr is
        TF1's lr_t and eps its epsilon. `lr` is a tensor in a CUDA graph (GraphedStep)."""
        if self._options.parity:
            assert isinstance(lr, float)
            self._update_explicit(state, grads, lr)
            return
        opt = self._spec.optimizer
        assert opt.beta1 is not None and opt.beta2 is not None and opt.epsilon is not None
        torch._fused_adam_(
            list(state.params),
            list(grads),
            list(state.m),
            list(state.v),
            [],
            [self._fused_step],
            lr=lr,
            beta1=opt.beta1,
            beta2=opt.beta2,
            weight_decay=0.0,
            eps=opt.epsilon,
            amsgrad=False,
            maximize=False,
        )

    def _update_explicit(
        self, state: State[torch.Tensor], grads: Sequence[torch.Tensor], lr: float
    ) -> None:
        """Written out op by op, in the same order as the other backends'."""
        opt = self._spec.optimizer
        # A tensor, not a Python float, so that lr is rounded to the dtype as in TensorFlow.
        lr_t = torch.tensor(lr, dtype=self._dtype)
        if opt.name == "sgd":
            for p, g in zip(state.params, grads, strict=True):
                p.sub_(lr_t * g)
            return
        assert opt.beta1 is not None and opt.beta2 is not None and opt.epsilon is not None
        for p, g, m, v in zip(state.params, grads, state.m, state.v, strict=True):
            m.mul_(opt.beta1).add_(g * (1.0 - opt.beta1))
            v.mul_(opt.beta2).add_((g * g) * (1.0 - opt.beta2))
            p.sub_((m * lr_t) / (self._sqrt(v) + opt.epsilon))

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._forward(self._params, x, None)

    def _predict(self, logits: torch.Tensor) -> torch.Tensor:
        if self._spec.loss.prediction == "argmax_relu_logits":
            logits = torch.relu(logits)
        return logits.argmax(dim=1)

    def _to_host(self, array: torch.Tensor) -> np.ndarray:
        """A host array; on the CPU it shares the tensor's memory."""
        return array.detach().cpu().numpy()

    # --- PyTorch only ----------------------------------------------------------------------

    @torch.no_grad()
    def _step_fast(
        self,
        x: torch.Tensor,
        y: torch.Tensor,  # the labels, (batch,)
        masks: list[torch.Tensor] | None,
        lr: float | torch.Tensor,  # Adam's lr_t is a tensor in a CUDA graph
        target: torch.Tensor | None = None,  # y's _targets, when computed ahead
    ) -> torch.Tensor:
        """The fast path: forward and backward written out, no autograd tape, in-place ops.

        Per step this launches about half the kernels autograd does. The products go through
        self._mm (MKL/cuBLAS or oneDNN, see resolve_matmul), on augmented weights and inputs
        (see _FastLayers): a layer's bias comes with its product, and with MKL SGD's update of
        weights and bias is one product. `x` carries its column of ones.
        """
        n_layers = len(self._params) // 2
        factors: list[torch.Tensor] = []
        if self._spec.model.dropout_rate > 0.0 and masks is not None:
            # The own masks are factors already; numpy's (tests) are True where kept.
            bools = masks[0].dtype == torch.bool
            factors = self._numpy_masks(masks, x.dtype) if bools else masks
        alphas, mm, layers = self._alphas, self._mm, self._layers
        inputs = [x, *layers.inputs]  # each layer's: post-ReLU, masked and scaled, with ones
        for i in range(n_layers):
            hidden = i < n_layers - 1
            h = mm.layer(
                inputs[i], layers.weights[i], layers.outputs[i] if hidden else layers.logits
            )
            if hidden:
                h.relu_()
                if factors:
                    h.mul_(factors[i])
        # Softmax cross-entropy and its gradient (softmax - onehot) / batch, from one
        # log_softmax: one op each. The gradient is log_softmax's backward of -onehot / batch,
        # elementwise (an indexed write would sort under determinism on CUDA and could not be
        # captured in a CUDA graph).
        log_probs = torch.log_softmax(h, dim=1)
        loss = F.nll_loss(log_probs, y)
        if target is None:
            target = self._targets(y)
        delta = torch._log_softmax_backward_data(target, log_probs, 1, log_probs.dtype)
        sgd = self._spec.optimizer.name == "sgd"
        for i in reversed(range(n_layers)):
            below = None
            if i > 0:  # the gradient for the layer below, before this layer's weights change;
                # dropped and inactive units are 0 in its output, so one threshold masks both
                weight, out = self._params[2 * i], layers.input_grads[i - 1]
                product = mm.input_grad(delta, weight, alphas[i], out)
                below = torch.ops.aten.threshold_backward.grad_input(
                    product, layers.outputs[i - 1], 0.0, grad_input=product
                )
            if sgd:
                assert isinstance(lr, float)  # SGD's rate is a constant, in a graph too
                mm.sgd(layers.weights[i], inputs[i], delta, lr)
            else:
                mm.weight_grad(layers.grads[i], inputs[i], delta)
            if below is not None:
                delta = below
        if not sgd:
            self._update(self._state, (self._flat_grad,), lr)
        return loss

    def _numpy_masks(self, keep: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
        """numpy's masks (tests), True where kept, as the own masks' factors."""
        return [k.to(dtype).mul_(self._kept_factor) for k in keep]

    def _sqrt(self, v: torch.Tensor) -> torch.Tensor:
        """The correctly rounded square root, as TensorFlow's: torch's CPU sqrt (SLEEF, within
        0.5001 ulp) is 1 ulp off for ~0.6% of float32 inputs; CUDA's sqrtf is IEEE-exact."""
        if v.device.type == "cpu":
            return torch.from_numpy(np.sqrt(v.numpy()))
        return v.sqrt()
