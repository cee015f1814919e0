"""What a Keras `model.fit` reference measured (backends.keras_fit, in a worker) as its parent
reads it (backends.keras_reference): imports no framework."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KerasFit:
    """What one reference measured, and what it ran on (as its worker reports it)."""

    samples_per_s: float  # the median of the epochs after the first
    ran_on: str  # the device that held the model's weights, as the framework names it
    keras_backend: str  # as Keras itself reports it once imported
    keras_version: str
    tf32: bool
    intra_op_threads: int
    jit_compile: bool  # what `fit` resolved Keras's default "auto" to on this backend


def device_kind(ran_on: str) -> str:
    """ "cpu" or "gpu" from a device as TensorFlow (`/job:.../device:GPU:0`), PyTorch
    (`cuda:0`) or JAX (`TFRT_CPU_0`, `cuda:0`) names it."""
    name = ran_on.lower()
    return "gpu" if "gpu" in name or "cuda" in name else "cpu"
