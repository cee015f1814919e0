"""--torch-matmul: which library computes the products, measured once per machine ("auto") and
kept in a cache file, so that reruns on one machine take the same path."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from backends.torch.products import (
    MklProducts,
    OneDnnProducts,
    Products,
    products_round,
    stored_operands,
)
from bench.core.cpu_activity import BUSY_CORES, activity_between, cpu_sample
from bench.core.data import resolve_cache_dir
from bench.core.errors import BenchError
from bench.core.options import ONEDNN_ONLY, Options
from bench.core.types import Device, layer_products

# A choice is cached per machine, PyTorch release and thread count, so that reruns on one
# machine take the same path and stay bit-identical.
MATMUL_CHOICES_FILE = "torch-matmul.json"
# oneDNN is taken only when clearly faster: near a tie, MKL (PyTorch's default) stays.
ONEDNN_MARGIN = 1.05
# Choices measured before the step's own products were timed are not read: they are measured
# again once.
KEY_SUFFIX = " | step products"


# The built-in stages' model (784-256-256-10, batch 100): a choice is kept per machine, not per
# stage, so it is measured on the products of their step.
_TUNING_PRODUCTS = layer_products(100, (784, 256, 256, 10))


def _burst(one_round: Callable[[], None], flops: int) -> float:
    """GFLOP/s of ten steps' products."""
    start = time.perf_counter()
    for _ in range(10):
        one_round()
    return 10 * flops / (time.perf_counter() - start) / 1e9


def _measure_choice(rounds: int = 7) -> dict[str, str]:
    """MKL against oneDNN on the step's eight products, laid out as the step stores them (as
    the attainable limit times them), in alternating bursts (a load that comes and goes falls
    on both), the median of each; the first round warms both up."""
    pairs = stored_operands(_TUNING_PRODUCTS, torch.device("cpu"))
    flops = sum(product.flops for product in _TUNING_PRODUCTS)
    paths: list[Products] = [MklProducts(), OneDnnProducts()]
    rates: dict[str, list[float]] = {"mkl": [], "onednn": []}
    for _ in range(rounds + 1):
        for products in paths:
            rates[products.name].append(_burst(products_round(products, pairs), flops))
    mkl, onednn = (statistics.median(rates[name][1:]) for name in ("mkl", "onednn"))
    choice = "onednn" if onednn > ONEDNN_MARGIN * mkl else "mkl"
    return {
        "choice": choice,
        "reason": f"measured: MKL {mkl:.0f}, oneDNN {onednn:.0f} GFLOP/s on the step's"
        f" products ({time.strftime('%Y-%m-%d')})",
    }


def _choices_path() -> Path:
    return resolve_cache_dir(None) / MATMUL_CHOICES_FILE


def auto_matmul(threads: int) -> tuple[str, str]:
    """ "mkl" or "onednn" for this machine, and why: measured once, then read from the cache."""
    from bench.core.devices import cpu_isa, cpu_model

    # The model name alone does not tell one AMD EPYC from another: the ISA does.
    key = f"{cpu_model()} ({cpu_isa()}) | torch {torch.__version__} | {threads} threads{KEY_SUFFIX}"
    path = _choices_path()
    try:
        choices = json.loads(path.read_text())
    except (OSError, ValueError):
        choices = {}
    if key not in choices:
        before = cpu_sample()
        measured = _measure_choice()
        busy = activity_between(before, cpu_sample()).others_cores
        if busy is not None and busy > BUSY_CORES:
            # Other work skews the two libraries unequally (one such measurement chose oneDNN
            # on a machine whose step ran 1.55x faster through MKL), and a choice is kept for
            # good: PyTorch's own products now, and a measurement again next time.
            return "mkl", (
                f"auto, not measured: other processes used {busy:.1f} cores while it was timed;"
                " PyTorch's default until a quiet run measures it"
            )
        choices[key] = measured
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
