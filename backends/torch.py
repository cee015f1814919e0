"""PyTorch backend: data on the device, a plain loop per epoch, losses kept on the device."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from backends.base import EVAL_BATCH, Backend, Device, Split, steps_per_epoch
from bench.data import MnistSplits
from bench.errors import BenchError
from bench.seeding import SeededRun
from bench.spec import StageSpec


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, device: Device, threads: int) -> None:
        torch.set_num_threads(threads)
        # One inter-op thread: the model is a strict chain, so a second pool only competes.
        # It can be set once per process only; a second backend in one process keeps it.
        if torch.get_num_interop_threads() != 1:
            with contextlib.suppress(RuntimeError):  # environment() records what is in force
                torch.set_num_interop_threads(1)
        if device == "gpu" and not torch.cuda.is_available():
            raise BenchError("--device gpu: PyTorch sees no CUDA GPU; use --device cpu")
        self._device = torch.device("cuda" if device == "gpu" else "cpu")

    def environment(self) -> dict[str, str]:
        env = {
            "framework": "torch",
            "framework_version": torch.__version__,
            "intra_op_threads": str(torch.get_num_threads()),
            "inter_op_threads": str(torch.get_num_interop_threads()),
        }
        if self._device.type == "cuda":
            env["gpu_model"] = torch.cuda.get_device_name(self._device)
            env["cuda_version"] = str(torch.version.cuda)
        return env

    def load_data(self, splits: MnistSplits) -> None:
        def put(array: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(array).to(self._device)

        self._train_x, self._train_y = put(splits.train_x), put(splits.train_y)
        self._eval = {
            "val": (put(splits.val_x), put(splits.val_y)),
            "test": (put(splits.test_x), put(splits.test_y)),
        }

    def build(self, spec: StageSpec, run: SeededRun) -> None:
        self._spec = spec
        self._steps = steps_per_epoch(self._train_x.shape[0], spec.training.batch_size)
        self._params = [
            torch.tensor(array, device=self._device, requires_grad=True)
            for layer in run.layers
            for array in (layer.weight, layer.bias)
        ]
        self._t = 0  # steps taken: Adam's t
        self._generator = torch.Generator(device=self._device)
        self._generator.manual_seed(run.dropout_seed)
        if spec.optimizer.name == "adam":
            self._m = [torch.zeros_like(p) for p in self._params]
            self._v = [torch.zeros_like(p) for p in self._params]

    def train_epoch(self, order: np.ndarray) -> np.ndarray:
        batch = self._spec.training.batch_size
        batches = torch.from_numpy(order[: self._steps * batch]).to(self._device)
        batches = batches.view(self._steps, batch)
        losses = torch.empty(self._steps, device=self._device)
        for i in range(self._steps):
            idx = batches[i]
            logits = self._forward(self._train_x.index_select(0, idx), training=True)
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
                logits = self._forward(x[start : start + EVAL_BATCH], training=False)
                correct += int((self._predict(logits) == y[start : start + EVAL_BATCH]).sum())
        return correct / x.shape[0]

    def logits(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = self._forward(torch.from_numpy(x).to(self._device), training=False)
        return out.cpu().numpy()

    def parameters(self) -> list[np.ndarray]:
        return [p.detach().cpu().numpy().copy() for p in self._params]

    def synchronize(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    # --- pieces ----------------------------------------------------------------------------

    def _forward(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        rate = self._spec.model.dropout_rate
        n_layers = len(self._params) // 2
        h = x
        for i in range(n_layers):
            h = torch.addmm(self._params[2 * i + 1], h, self._params[2 * i])
            if i < n_layers - 1:
                h = torch.relu(h)
                if training and rate > 0.0:
                    keep = torch.rand(h.shape, device=h.device, generator=self._generator) >= rate
                    h = h * keep / (1.0 - rate)
        return h

    def _predict(self, logits: torch.Tensor) -> torch.Tensor:
        if self._spec.loss.prediction == "argmax_relu_logits":
            logits = torch.relu(logits)
        return logits.argmax(dim=1)

    def _update(self, grads: tuple[torch.Tensor, ...]) -> None:
        opt = self._spec.optimizer
        lr = opt.learning_rate
        if opt.name == "sgd":
            torch._foreach_add_(self._params, grads, alpha=-lr)
            return
        assert opt.beta1 is not None and opt.beta2 is not None and opt.epsilon is not None
        # TF1 AdamOptimizer: bias correction folded into the step size, epsilon outside it.
        lr_t = lr * (1.0 - opt.beta2**self._t) ** 0.5 / (1.0 - opt.beta1**self._t)
        for p, g, m, v in zip(self._params, grads, self._m, self._v, strict=True):
            m.mul_(opt.beta1).add_(g, alpha=1.0 - opt.beta1)
            v.mul_(opt.beta2).addcmul_(g, g, value=1.0 - opt.beta2)
            p.addcdiv_(m, v.sqrt().add_(opt.epsilon), value=-lr_t)
