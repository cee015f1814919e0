"""The stage spec: one TOML file per tutorial stage, validated into frozen dataclasses.

This module imports no framework: every backend reads the same spec object.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from bench.errors import BenchError

STAGES_DIR = Path(__file__).parent / "stages"
STAGE_NAMES = ("relu-normal", "relu-xavier", "adam", "dropout")


@dataclass(frozen=True)
class ModelSpec:
    layer_sizes: tuple[int, ...]
    hidden_activation: Literal["relu"]
    dropout_rate: float


@dataclass(frozen=True)
class InitSpec:
    """How one kind of parameter (weights or biases) is drawn, for every layer."""

    kind: Literal["normal", "glorot_uniform", "zeros"]
    std: float | None = None


@dataclass(frozen=True)
class InitsSpec:
    weights: InitSpec
    biases: InitSpec


@dataclass(frozen=True)
class OptimizerSpec:
    name: Literal["sgd", "adam"]
    learning_rate: float
    # Adam only; the update is TF1's AdamOptimizer rule (epsilon outside the bias correction).
    beta1: float | None = None
    beta2: float | None = None
    epsilon: float | None = None


@dataclass(frozen=True)
class LossSpec:
    loss: Literal["softmax_cross_entropy"]
    prediction: Literal["argmax_relu_logits", "argmax_logits"]


@dataclass(frozen=True)
class TrainingSpec:
    epochs: int
    batch_size: int
    reshuffle_every_epoch: bool


@dataclass(frozen=True)
class DataSpec:
    dataset: Literal["mnist"]
    validation: Literal["first_5000_train"]
    scale: Literal["divide_by_255"]


@dataclass(frozen=True)
class ExpectedSpec:
    """What the tutorial reported and what this project's regression test demands."""

    tutorial_reported: str
    expect: Literal["min_test_accuracy", "does_not_learn"]
    rule: str
    tutorial_test_accuracy: float | None = None
    min_test_accuracy: float | None = None

    def met_by(self, outcome: str, test_accuracy: float | None) -> bool:
        """Whether a cell's outcome meets this stage's regression expectation."""
        if self.expect == "does_not_learn":
            return outcome != "converged"
        assert self.min_test_accuracy is not None  # guaranteed by validation
        return outcome == "converged" and (test_accuracy or 0.0) >= self.min_test_accuracy

    def describe(self) -> str:
        if self.expect == "does_not_learn":
            return "does not learn"
        return f">= {100 * (self.min_test_accuracy or 0.0):.2f}%"


@dataclass(frozen=True)
class StageSpec:
    name: str
    description: str
    tutorial_deviations: str
    model: ModelSpec
    init: InitsSpec
    optimizer: OptimizerSpec
    loss: LossSpec
    training: TrainingSpec
    data: DataSpec
    expected: ExpectedSpec

    def flat(self) -> dict[str, str]:
        """The spec as dotted keys -> strings, for MLflow params."""
        return _flatten(dataclasses.asdict(self))

    @property
    def n_layers(self) -> int:
        return len(self.model.layer_sizes) - 1


T = TypeVar("T")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        elif value is not None and key not in ("description", "tutorial_deviations", "rule"):
            flat[name] = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    return flat


def _check_value(value: Any, hint: Any, where: str) -> Any:
    """Check one TOML value against a type hint; return it converted (lists -> tuples)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        return _check_value(value, options[0], where)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise BenchError(
                f"{where} = {value!r} is not one of {list(allowed)}; fix the stage file"
            )
        return value
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list):
            raise BenchError(f"{where} must be a list; fix the stage file")
        return tuple(_check_value(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise BenchError(f"{where} must be a table; fix the stage file")
        return _build(typing.cast(type[Any], hint), value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool, float) and type(value) is hint:
        return value
    raise BenchError(
        f"{where} = {value!r} has type {type(value).__name__}, expected {hint.__name__};"
        " fix the stage file"
    )


def _build(cls: type[T], table: dict[str, Any], where: str) -> T:
    """Build a frozen dataclass from a TOML table, rejecting unknown and missing keys."""
    fields = {f.name: f for f in dataclasses.fields(typing.cast(Any, cls))}
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise BenchError(
            f"unknown key {where}.{unknown[0]} (allowed: {', '.join(fields)}); fix the stage file"
        )
    values = {}
    for name, field in fields.items():
        if name in table:
            values[name] = _check_value(table[name], hints[name], f"{where}.{name}")
        elif field.default is dataclasses.MISSING:
            raise BenchError(f"missing key {where}.{name}; add it to the stage file")
    return cls(**values)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise BenchError(f"{message}; fix the stage file")


def _validate(spec: StageSpec, where: str) -> None:
    """Checks across fields that the type hints cannot express."""
    sizes = spec.model.layer_sizes
    _require(len(sizes) >= 2 and all(s > 0 for s in sizes), f"{where}: bad layer_sizes {sizes}")
    _require(sizes[0] == 784 and sizes[-1] == 10, f"{where}: MNIST needs 784 inputs, 10 outputs")
    _require(0.0 <= spec.model.dropout_rate < 1.0, f"{where}: dropout_rate must be in [0, 1)")
    for part in ("weights", "biases"):
        init: InitSpec = getattr(spec.init, part)
        needs_std = init.kind == "normal"
        _require(
            (init.std is not None) == needs_std,
            f"{where}: init.{part}.std is needed for 'normal' and only for it",
        )
        _require(init.std is None or init.std > 0, f"{where}: init.{part}.std must be > 0")
    opt = spec.optimizer
    adam_keys = (opt.beta1, opt.beta2, opt.epsilon)
    is_adam = opt.name == "adam"
    _require(
        all(k is not None for k in adam_keys) if is_adam else all(k is None for k in adam_keys),
        f"{where}: optimizer beta1, beta2, epsilon are needed for adam and only for it",
    )
    _require(math.isfinite(opt.learning_rate) and opt.learning_rate > 0, f"{where}: bad lr")
    _require(spec.training.epochs >= 1, f"{where}: training.epochs must be >= 1")
    _require(spec.training.batch_size >= 1, f"{where}: training.batch_size must be >= 1")
    exp = spec.expected
    _require(
        (exp.min_test_accuracy is not None) == (exp.expect == "min_test_accuracy"),
        f"{where}: expected.min_test_accuracy is needed for min_test_accuracy and only for it",
    )


def parse_stage(text: str, where: str) -> StageSpec:
    """Parse and validate one stage file's text; `where` names it in errors."""
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"{where} is not valid TOML ({exc}); fix the stage file") from None
    spec = _build(StageSpec, table, where)
    _validate(spec, where)
    return spec


def stage_path(name: str) -> Path:
    if name not in STAGE_NAMES:
        raise BenchError(f"unknown stage {name!r}; choose from {', '.join(STAGE_NAMES)}")
    return STAGES_DIR / f"{name}.toml"


def load_stage(name: str) -> StageSpec:
    """Load a named stage from bench/stages/."""
    path = stage_path(name)
    try:
        text = path.read_text()
    except OSError as exc:
        raise BenchError(f"cannot read stage file {path} ({exc.strerror}); restore it") from None
    spec = parse_stage(text, path.name)
    if spec.name != name:
        raise BenchError(f"{path.name} declares name {spec.name!r}; make it {name!r}")
    return spec


def with_epochs(spec: StageSpec, epochs: int | None) -> StageSpec:
    """The spec with the epoch count overridden (from --epochs), or unchanged."""
    if epochs is None:
        return spec
    if epochs < 1:
        raise BenchError(f"--epochs {epochs} must be at least 1")
    training = dataclasses.replace(spec.training, epochs=epochs)
    return dataclasses.replace(spec, training=training)
