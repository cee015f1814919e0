"""PyTorch backend: data on the device, a plain loop per epoch, losses kept on the device."""

from __future__ import annotations

import contextlib
import os
import re
import time

import numpy as np
import torch
import torch.nn.functional as F

from backends.base import (
    DEFAULT_SETTINGS,
    EVAL_BATCH,
    Backend,
    Device,
    Masks,
    Settings,
    Split,
    adam_step_size,
)
from bench.data import MnistSplits
from bench.errors import BenchError
from bench.seeding import SeededRun
from bench.spec import StageSpec


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, device: Device, threads: int, settings: Settings = DEFAULT_SETTINGS) -> None:
        torch.set_num_threads(threads)
        # Settable once per process only; a second backend in one process keeps the first's
        # (environment() records what is in force).
        if torch.get_num_interop_threads() != settings.inter_op_threads:
            with contextlib.suppress(RuntimeError):
                torch.set_num_interop_threads(settings.inter_op_threads)
        if device == "gpu" and not torch.cuda.is_available():
            raise BenchError("--device gpu: PyTorch sees no CUDA GPU; use --device cpu")
        if settings.deterministic:
            # cuBLAS needs a fixed workspace to be deterministic; set before CUDA starts.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(settings.deterministic)
        # Flush subnormals to zero, as TensorFlow's CPU threads do: Adam's g * g underflows into
        # subnormals, which x86 computes ~100x slower; flushing also keeps the two frameworks'
        # numbers alike.
        torch.set_flush_denormal(True)
        torch.backends.cuda.matmul.allow_tf32 = settings.tf32
        torch.backends.cudnn.allow_tf32 = settings.tf32
        self._device = torch.device("cuda" if device == "gpu" else "cpu")
        self._settings = settings
        self._dtype = torch.float64 if settings.dtype == "float64" else torch.float32

    def environment(self) -> dict[str, str]:
        blas = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
        env = {
            "framework": "torch",
            "framework_version": torch.__version__,
            "intra_op_threads": str(torch.get_num_threads()),
            "inter_op_threads": str(torch.get_num_interop_threads()),
            "deterministic_ops": str(torch.are_deterministic_algorithms_enabled()).lower(),
            "tf32": str(torch.backends.cuda.matmul.allow_tf32).lower(),
            "dtype": self._settings.dtype,
            "framework_blas": blas.group(1) if blas else "unknown",
            "flush_denormal": "true",
            "mkldnn": str(torch.backends.mkldnn.is_available()).lower(),  # type: ignore[no-untyped-call]
            "cuda_version": str(torch.version.cuda or "none"),
            "cudnn_version": str(torch.backends.cudnn.version() or "none"),  # type: ignore[no-untyped-call]
        }
        if self._device.type == "cuda":
            env["gpu_model"] = torch.cuda.get_device_name(self._device)
        return env

    def load_data(self, splits: MnistSplits) -> None:
        def put(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
            return (
                torch.from_numpy(x).to(self._device, self._dtype),
                torch.from_numpy(y).to(self._device),
            )

        self._train_x, self._train_y = put(splits.train_x, splits.train_y)
        self._eval = {
            "val": put(splits.val_x, splits.val_y),
            "test": put(splits.test_x, splits.test_y),
        }

    def build(self, spec: StageSpec, run: SeededRun) -> None:
        self._spec = spec
        self._t = 0  # steps taken: Adam's t
        # Tensors, not Python floats, so each scalar is rounded to the dtype as in TensorFlow.
        self._lr = torch.tensor(spec.optimizer.learning_rate, dtype=self._dtype)
        self._keep_scale = torch.tensor(1.0 - spec.model.dropout_rate, dtype=self._dtype)
        self._params = [
            torch.tensor(array, device=self._device, dtype=self._dtype, requires_grad=True)
            for layer in run.layers
            for array in (layer.weight, layer.bias)
        ]
        self._generator = torch.Generator(device=self._device)
        self._generator.manual_seed(run.dropout_seed)
        if spec.optimizer.name == "adam":
            self._m = [torch.zeros_like(p) for p in self._params]
            self._v = [torch.zeros_like(p) for p in self._params]

    def train_epoch(self, order: np.ndarray, masks: Masks = None) -> np.ndarray:
        batch = self._spec.training.batch_size
        steps = len(order) // batch
        batches = torch.from_numpy(order[: steps * batch]).to(self._device).view(steps, batch)
        keep = None if masks is None else [torch.from_numpy(m).to(self._device) for m in masks]
        losses = torch.empty(steps, device=self._device, dtype=self._dtype)
        for i in range(steps):
            idx = batches[i]
            logits = self._forward(
                self._train_x.index_select(0, idx), None if keep is None else [k[i] for k in keep]
            )
            loss = F.cross_entropy(logits, self._train_y.index_select(0, idx))
            grads = torch.autograd.grad(loss, self._params)
            self._t += 1
            with torch.no_grad():
                self._update(grads)
                losses[i] = loss  # stays on the device: no host sync per step
        return losses.cpu().numpy()  # the copy to host waits for the device

    def accuracy(self, split: Split) -> float:
        x, y = self._eval[split]
        correct = 0
        with torch.no_grad():
            for start in range(0, x.shape[0], EVAL_BATCH):
                logits = self._forward(x[start : start + EVAL_BATCH], None, training=False)
                correct += int((self._predict(logits) == y[start : start + EVAL_BATCH]).sum())
        return correct / x.shape[0]

    def logits(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            inputs = torch.from_numpy(x).to(self._device, self._dtype)
            out = self._forward(inputs, None, training=False)
        return out.cpu().numpy()

    def parameters(self) -> list[np.ndarray]:
        return [p.detach().cpu().numpy().copy() for p in self._params]

    def matmul_seconds(self, size: int, repeats: int) -> float:
        generator = torch.Generator(device=self._device).manual_seed(1)
        a, b = (torch.rand(size, size, device=self._device, generator=generator) for _ in range(2))
        torch.mm(a, b)  # warm-up: kernel selection, thread pool start
        self.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b)
        self.synchronize()
        return time.perf_counter() - start

    def device_memory_peak_mb(self) -> float | None:
        if self._device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self._device) / 2**20

    def synchronize(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    # --- pieces ----------------------------------------------------------------------------

    def _forward(
        self, x: torch.Tensor, keep: list[torch.Tensor] | None, training: bool = True
    ) -> torch.Tensor:
        """Logits; dropout in training, from numpy masks (`keep`) or the seeded generator."""
        rate = self._spec.model.dropout_rate
        n_layers = len(self._params) // 2
        h = x
        for i in range(n_layers):
            h = torch.addmm(self._params[2 * i + 1], h, self._params[2 * i])
            if i == n_layers - 1:
                break
            h = torch.relu(h)
            if training and rate > 0.0:
                mask = (
                    keep[i]
                    if keep is not None
                    else torch.rand(h.shape, device=h.device, generator=self._generator) >= rate
                )
                h = torch.where(mask, h / self._keep_scale.to(h.device), torch.zeros_like(h))
        return h

    def _predict(self, logits: torch.Tensor) -> torch.Tensor:
        if self._spec.loss.prediction == "argmax_relu_logits":
            logits = torch.relu(logits)
        return logits.argmax(dim=1)

    def _update(self, grads: tuple[torch.Tensor, ...]) -> None:
        if self._settings.parity:
            self._update_explicit(grads)
            return
        # Multi-tensor (_foreach) kernels: the TF1 rule in a handful of launches.
        opt = self._spec.optimizer
        if opt.name == "sgd":
            torch._foreach_add_(self._params, grads, alpha=-opt.learning_rate)
            return
        assert opt.beta1 is not None and opt.beta2 is not None and opt.epsilon is not None
        lr_t = adam_step_size(opt.learning_rate, opt.beta1, opt.beta2, self._t)
        torch._foreach_mul_(self._m, opt.beta1)
        torch._foreach_add_(self._m, grads, alpha=1.0 - opt.beta1)
        torch._foreach_mul_(self._v, opt.beta2)
        torch._foreach_addcmul_(self._v, grads, grads, value=1.0 - opt.beta2)
        denominators = torch._foreach_sqrt(self._v)
        torch._foreach_add_(denominators, opt.epsilon)
        torch._foreach_addcdiv_(self._params, self._m, denominators, value=-lr_t)

    def _update_explicit(self, grads: tuple[torch.Tensor, ...]) -> None:
        """Written out op by op, in the same order as the TensorFlow backend's."""
        opt = self._spec.optimizer
        if opt.name == "sgd":
            for p, g in zip(self._params, grads, strict=True):
                p.sub_(self._lr * g)
            return
        assert opt.beta1 is not None and opt.beta2 is not None and opt.epsilon is not None
        lr_t = torch.tensor(
            adam_step_size(opt.learning_rate, opt.beta1, opt.beta2, self._t), dtype=self._dtype
        )
        for p, g, m, v in zip(self._params, grads, self._m, self._v, strict=True):
            m.mul_(opt.beta1).add_(g * (1.0 - opt.beta1))
            v.mul_(opt.beta2).add_((g * g) * (1.0 - opt.beta2))
            p.sub_((m * lr_t) / (v.sqrt() + opt.epsilon))
