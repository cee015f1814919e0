"""The peak dense float32 matmul rate of a device, measured through each framework: what a cell's
throughput is held against (its roofline, bench.recording.speed). Asked of a worker process
(`peak_request`), measured there (`measure_peak`)."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from bench.core.options import Options
from bench.core.types import Product

PEAK_SECONDS = 1.0  # each timed burst of products; the best of three bursts is kept


def peak_size(device: str) -> int:
    """Matrix side for the peak measurement: large enough to saturate the device."""
    return 8192 if device == "gpu" else 2048


def peak_uses_tf32(device: str, options: Options) -> bool:
    """Whether a device's cells may use TF32, so that their limit is the TF32 peak (on an H200
    several times the float32 one); CPUs have no TF32."""
    return options.tf32 and device == "gpu"


def peak_options(device: str, options: Options) -> Options:
    """What a peak of the cells' device runs with: their threads and products' library, TF32
    where they may use it, op determinism off; no data, as a peak trains nothing."""
    return Options(
        data_dir="",
        threads=options.threads,
        nondeterministic=True,
        tf32=peak_uses_tf32(device, options),
        torch_matmul=options.torch_matmul,
    )


def peak_request(backend: str, device: str, options: Options) -> dict[str, Any]:
    """What a worker process is asked to measure the peak matmul rate of, for cells that run
    with `options`."""
    return {
        "mode": "peak",
        "backend": backend,
        "device": device,
        "options": asdict(peak_options(device, options)),
    }


def peak_label(request: dict[str, Any]) -> str:
    tf32 = " with TF32" if request["options"]["tf32"] else ""
    return f"peak on {request['backend']}/{request['device']}{tf32}"


def measure_peak(backend_name: str, device: str, options: Options) -> float:
    """Peak dense float32 matmul GFLOP/s through the framework itself (best of 3 bursts), with
    the options of `peak_options`. Imports the framework: run in a worker process."""
    from backends import load_backend

    backend = load_backend(backend_name)(device, options)  # type: ignore[arg-type]
    size = peak_size(device)
    return 2.0 * size**3 / _best_seconds_each(functools.partial(backend.matmul_seconds, size)) / 1e9


def _best_seconds_each(timed: Callable[[int], float]) -> float:
    """Seconds of one repeat of `timed(repeats)`: bursts of about PEAK_SECONDS (sized by a
    probe of two repeats), the best of three."""
    probe = timed(2) / 2
    repeats = max(3, math.ceil(PEAK_SECONDS / max(probe, 1e-6)))
    return min(timed(repeats) for _ in range(3)) / repeats


def attainable_request(
    backend: str, device: str, options: Options, products: list[list[Product]]
) -> dict[str, Any]:
    """What a worker process is asked to time: each list of a step's products, as the cells
    that run with `options` compute them (their threads, library, compiler, TF32)."""
    return {
        "mode": "attainable",
        "backend": backend,
        "device": device,
        "options": asdict(options),
        "products": products,
    }


def measure_attainable(
    backend_name: str, device: str, options: Options, products: list[list[Product]]
) -> list[float]:
    """Seconds a step of each list of products takes, the products alone, through the cells'
    own path (best of 3 bursts, as the peak). Imports the framework: run in a worker process."""
    from backends import load_backend

    backend = load_backend(backend_name)(device, options)  # type: ignore[arg-type]
    seconds = []
    for step in products:
        shapes = [Product(*p) for p in step]  # JSON brought them as lists
        seconds.append(_best_seconds_each(functools.partial(backend.products_seconds, shapes)))
    return seconds
