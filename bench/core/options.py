"""The options of an invocation: one object, its fields named as the command line's flags.

`threads` is --threads, `no_xla` is --no-xla: the command line maps onto the object by name
(`from_args`), and a recorded field is the MLflow param `option.<field>` (`record`), read back
by `from_record` for `reproduce`. Adding an option is a field here, its flag in the CLI, and the
backend that uses it. Each field says on itself what it does (`option`): its effect on a cell
(which `compare` reads), how it is recorded, and, for an option only some frameworks have, which
(the other frameworks' cells record it "n/a").
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bench.core.errors import BenchError
from bench.core.types import DType, environment_of

# PyTorch's CPU products: "mkl" (its default sgemm), "onednn" (the oneDNN it bundles), or
# "auto": whichever a short measurement on this machine finds faster (see backends.torch).
TorchMatmul = Literal["auto", "mkl", "onednn"]
ONEDNN_ONLY = (
    "--torch-matmul onednn: float32 training on a CPU, outside parity mode, only;"
    " drop it or use --torch-matmul auto"
)
Accumulate = Literal["float64", "native"]
NOT_APPLICABLE = "n/a"

# What a field does to a cell. "results": the numbers computed (`compare` refuses two sides
# that differ in it); "speed": only how fast they are computed, and by rounding their last bits
# (`compare` lists it as what changed); "none": neither (what a cell keeps or returns).
Effect = Literal["results", "speed", "none"]
EFFECTS: tuple[Effect, ...] = typing.get_args(Effect)


@dataclass(frozen=True)
class Recorded:
    """How a field is recorded. `legacy`: the param older records hold it under, `inverted`
    when that one meant the opposite (option.deterministic for --nondeterministic); `absent`:
    the value of a record made before the option existed."""

    legacy: str | None = None
    inverted: bool = False
    absent: str | None = None


def option(
    effect: Effect,
    recorded: Recorded | None = None,
    *,
    frameworks: tuple[str, ...] = (),
    fingerprint: bool = False,
) -> dict[str, Any]:
    """A field's metadata: its `effect`; `recorded`, how it is recorded as the param
    option.<name> (None: not as an option); `frameworks`, the backends that have it where
    not every one does; `fingerprint`, whether it is part of the software under which two
    deterministic cells must have the same step losses bit for bit (`compare`)."""
    about: dict[str, Any] = {"effect": effect, "frameworks": frameworks, "fingerprint": fingerprint}
    return about | ({"recorded": recorded} if recorded is not None else {})


@dataclass(frozen=True)
class Options:
    """What applies to every cell of an invocation (see the module's doc)."""

    # Resolved at planning; recorded per cell as data_sha256, not as an option.
    data_dir: str = field(metadata=option("results"))
    threads: int = field(metadata=option("speed", Recorded(), fingerprint=True))
    # None: the stage file's; recorded as training.epochs.
    epochs: int | None = field(default=None, metadata=option("results"))
    dtype: DType = field(
        default="float32", metadata=option("results", Recorded(), fingerprint=True)
    )
    # Dropout masks drawn by numpy and updates written out op by op, identically everywhere.
    parity: bool = field(default=False, metadata=option("results", Recorded()))
    # Parity in float32: products, sums, the loss and its gradient computed in float64 and
    # rounded once to float32 (parameters, gradients, optimizer state and updates stay float32).
    # Each framework's float32 kernels sum in their own order, ~1e-7 apart, which Adam and
    # N(0, 1) weights amplify past any tolerance within 50 steps; rounded once, the frameworks
    # agree to the last bit in nearly every element. "native": the frameworks' float32 kernels.
    # Runs recorded before the option computed parity in the native kernels.
    accumulate: Accumulate = field(
        default="float64",
        metadata=option("results", Recorded(legacy="parity_accumulate", absent="native")),
    )
    # Framework op determinism off (TF op determinism / torch.use_deterministic_algorithms):
    # the same experiment, free to take faster kernels that sum in any order.
    nondeterministic: bool = field(
        default=False,
        metadata=option("speed", Recorded(legacy="deterministic", inverted=True), fingerprint=True),
    )
    # TensorFloat-32 matmuls on Ampere+ GPUs: faster, not exact.
    tf32: bool = field(default=False, metadata=option("speed", Recorded()))
    # The model is a strict chain of ops: a second inter-op pool only competes for the cores.
    inter_op_threads: int = field(default=1, metadata=option("speed", Recorded(absent="1")))
    # TensorFlow: the plain graph executor instead of XLA over the whole epoch (XLA fuses the
    # elementwise ops: ~1.7x faster on this model's CPU runs). Runs before the option: no XLA.
    no_xla: bool = field(
        default=False,
        metadata=option(
            "speed",
            Recorded(legacy="xla", inverted=True, absent="true"),
            frameworks=("tensorflow",),
            fingerprint=True,
        ),
    )
    # PyTorch on a GPU: capture the training step in a CUDA graph and replay it (one launch
    # instead of ~40 per step; this model's GPU steps are launch-bound).
    cuda_graphs: bool = field(
        default=False,
        metadata=option("speed", Recorded(absent="false"), frameworks=("torch",)),
    )
    # PyTorch on a CPU: which library computes the fast step's products (TorchMatmul). As
    # asked; the path a cell took, and why, is its env torch_matmul(_reason).
    torch_matmul: TorchMatmul = field(
        default="auto", metadata=option("speed", Recorded(), frameworks=("torch",))
    )
    # Stop after this many training steps (parity checks).
    steps: int | None = field(default=None, metadata=option("results"))
    # Return the final weights (parity checks).
    keep_parameters: bool = field(default=False, metadata=option("none"))

    @property
    def deterministic(self) -> bool:
        return not self.nondeterministic

    @property
    def xla(self) -> bool:
        return not self.no_xla

    @property
    def compute_dtype(self) -> DType:
        """The dtype a training step computes in (see `accumulate`)."""
        return "float64" if self.parity and self.accumulate == "float64" else self.dtype

    @classmethod
    def from_args(cls, args: argparse.Namespace, **resolved: Any) -> Options:
        """The options a command line gave, by name; `resolved` wins (the data folder and
        threads, resolved at planning). A flag left unset (None) keeps the field's default."""
        given = {
            f.name: getattr(args, f.name)
            for f in dataclasses.fields(cls)
            if getattr(args, f.name, None) is not None
        }
        return cls(**(given | resolved))

    def record(self, backend: str | None = None) -> dict[str, str]:
        """The options that change results, as MLflow params (what `reproduce` reads back).

        For one backend's cells, an option only other frameworks have is "n/a": a TensorFlow
        cell never ran a CUDA graph, whatever the invocation asked of PyTorch.
        """
        params = {
            f"option.{f.name}": (
                _encode(getattr(self, f.name)) if _applies(f, backend) else NOT_APPLICABLE
            )
            for f in dataclasses.fields(self)
            if "recorded" in f.metadata
        }
        # Outside parity each framework's own RNG, with backends.base.dropout_threshold.
        params["option.dropout_masks"] = "numpy" if self.parity else "framework-rng-16bit"
        return params

    @classmethod
    def from_record(cls, params: Mapping[str, str], data_dir: str) -> Options:
        """The inverse of record(), from a cell's MLflow params (with its training.epochs)."""
        params = normalised(params)
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            text = params.get(f"option.{f.name}", NOT_APPLICABLE)
            if "recorded" in f.metadata and text != NOT_APPLICABLE:
                values[f.name] = _decode(f.name, text, hints[f.name])
        if "threads" not in values or "training.epochs" not in params:
            raise BenchError(
                "the run lacks its option params; it was recorded by an older mlp-bench that"
                " did not record its options"
            )
        values["torch_matmul"] = _recorded_matmul(params)
        return cls(data_dir=data_dir, epochs=int(params["training.epochs"]), **values)


def normalised(params: Mapping[str, str]) -> dict[str, str]:
    """A cell's params with every option under its current name: an older record's
    option.deterministic=true reads as option.nondeterministic=false, an option recorded
    before it existed as the value it had then. Other params pass through unchanged."""
    out = dict(params)
    if not any(key.startswith("option.") for key in params):
        return out  # not a cell's params (or from before options were recorded)
    for f in dataclasses.fields(Options):
        how: Recorded | None = f.metadata.get("recorded")
        key = f"option.{f.name}"
        if how is None or key in out:
            continue
        old = out.pop(f"option.{how.legacy}", None) if how.legacy else None
        if old is not None and how.inverted and old in ("true", "false"):
            old = "false" if old == "true" else "true"
        value = old if old is not None else how.absent
        if value is not None:
            out[key] = value
    return out


def framework_options() -> dict[str, tuple[str, ...]]:
    """Each option that only some frameworks have, and which (as its field declares)."""
    return {
        f.name: f.metadata["frameworks"]
        for f in dataclasses.fields(Options)
        if f.metadata.get("frameworks")
    }


def option_params(effect: Effect) -> tuple[str, ...]:
    """The params (option.<field>) of the recorded fields with this effect."""
    return tuple(
        f"option.{f.name}"
        for f in dataclasses.fields(Options)
        if "recorded" in f.metadata and f.metadata["effect"] == effect
    )


def fingerprint_params() -> tuple[str, ...]:
    """The params (option.<field>) of the recorded fields that are part of the fingerprint."""
    return tuple(
        f"option.{f.name}"
        for f in dataclasses.fields(Options)
        if "recorded" in f.metadata and f.metadata["fingerprint"]
    )


def _applies(f: dataclasses.Field[Any], backend: str | None) -> bool:
    """Whether a field means something to a backend's cells (None: to the whole invocation)."""
    owners: tuple[str, ...] = f.metadata["frameworks"]
    return backend is None or not owners or backend in owners


def _encode(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _decode(name: str, text: str, hint: Any) -> Any:
    """A recorded param back to the field's type; a value the type does not allow is an
    error that names the param (a hand-edited or foreign record)."""
    if hint is bool and text in ("true", "false"):
        return text == "true"
    if hint is int and text.isdigit():
        return int(text)
    if typing.get_origin(hint) is Literal and text in typing.get_args(hint):
        return text
    raise BenchError(f"the run's param option.{name} is {text!r}, which this mlp-bench cannot read")


def _recorded_matmul(params: Mapping[str, str]) -> TorchMatmul:
    """The products' library a recorded cell used, so that a rerun takes the same path (an
    "auto" decided on another machine could differ); runs from before the option used MKL."""
    taken = environment_of(dict(params)).get("torch_matmul", "")
    if taken in ("mkl", "onednn"):
        return taken  # type: ignore[return-value]
    asked = params.get("option.torch_matmul", "mkl")
    return asked if asked in ("mkl", "onednn") else "auto"  # type: ignore[return-value]
