"""--torch-matmul: which library computes the products, measured once per machine ("auto") and
kept in a cache file, so that reruns on one machine take the same path."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import torch

from backends.torch.products import MklProducts, OneDnnProducts, Products
from bench.core.data import resolve_cache_dir
from bench.core.errors import BenchError
from bench.core.options import ONEDNN_ONLY, Options
from bench.core.types import Device

# A choice is cached per machine, PyTorch release and thread count, so that reruns on one
# machine take the same path and stay bit-identical.
MATMUL_CHOICES_FILE = "torch-matmul.json"
# oneDNN is taken only when clearly faster: near a tie, MKL (PyTorch's default) stays.
ONEDNN_MARGIN = 1.05


class _StepProducts:
    """The training step's batch-100 products (forward, input and weight gradients of a
    784x256 and a 256x256 layer), timed in short bursts through one library."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self._layers = [
            (torch.rand(100, n, generator=generator), torch.rand(n, 256, generator=generator))
            for n in (784, 256)
        ]
        self._delta = torch.rand(100, 256, generator=generator)
        self._bias = torch.zeros(256)
        self._grads = [torch.empty(n, 256) for n in (784, 256)]
        self.flops = sum(3 * 2 * 100 * h.shape[1] * 256 for h, _ in self._layers) * 10

    def burst(self, products: Products) -> float:
        """GFLOP/s of ten steps' products."""
        start = time.perf_counter()
        for _ in range(10):
            for (h, w), grad in zip(self._layers, self._grads, strict=True):
                products.layer(h, w, self._bias, 1.0)
                products.input_grad(self._delta, w, 1.0)
                products.weight_grad(grad, h, self._delta, 1.0)
        return self.flops / (time.perf_counter() - start) / 1e9


def _measure_choice(rounds: int = 7) -> dict[str, str]:
    """MKL against oneDNN, in alternating bursts (a load that comes and goes falls on both),
    the median of each; the first round warms both up."""
    paths: list[Products] = [MklProducts(torch.zeros(())), OneDnnProducts()]
    step = _StepProducts()
    rates: dict[str, list[float]] = {"mkl": [], "onednn": []}
    for _ in range(rounds + 1):
        for products in paths:
            rates[products.name].append(step.burst(products))
    mkl, onednn = (statistics.median(rates[name][1:]) for name in ("mkl", "onednn"))
    choice = "onednn" if onednn > ONEDNN_MARGIN * mkl else "mkl"
    return {
        "choice": choice,
        "reason": f"measured: MKL {mkl:.0f}, oneDNN {onednn:.0f} GFLOP/s on the batch-100"
        f" products ({time.strftime('%Y-%m-%d')})",
    }


def _choices_path() -> Path:
    return resolve_cache_dir(None) / MATMUL_CHOICES_FILE


def auto_matmul(threads: int) -> tuple[str, str]:
    """ "mkl" or "onednn" for this machine, and why: measured once, then read from the cache."""
    from bench.core.devices import cpu_isa, cpu_model

    # The model name alone does not tell one AMD EPYC from another: the ISA does.
    key = f"{cpu_model()} ({cpu_isa()}) | torch {torch.__version__} | {threads} threads"
    path = _choices_path()
    try:
        choices = json.loads(path.read_text())
    except (OSError, ValueError):
        choices = {}
    if key not in choices:
        choices[key] = _measure_choice()
        with contextlib.suppress(OSError):  # an unwritable cache measures again next time
            path.parent.mkdir(parents=True, exist_ok=True)
            scratch = path.with_suffix(f".{os.getpid()}.tmp")
            scratch.write_text(json.dumps(choices, indent=1, sort_keys=True))
            scratch.replace(path)
    entry = choices[key]
    return entry["choice"], f"auto, {entry['reason']}"


def resolve_matmul(options: Options, device: Device, threads: int) -> tuple[str, str]:
    """Which library computes this backend's products, and why."""
    fixed = None
    if device == "gpu":
        fixed = "cublas", "a GPU: cuBLAS"
    elif options.parity:
        fixed = "mkl", "parity mode: autograd products, unchanged"
    elif options.dtype == "float64":
        fixed = "mkl", "float64: oneDNN has no double-precision products"
    if fixed is not None:
        if options.torch_matmul == "onednn":
            raise BenchError(ONEDNN_ONLY)
        return fixed
    if options.torch_matmul != "auto":
        return options.torch_matmul, "asked for (--torch-matmul)"
    return auto_matmul(threads)
