"""The stage spec: one TOML file per stage, validated into frozen dataclasses.

Stages are found on disk (`bench/core/stages/*.toml`, or the folder in MLP_BENCH_STAGES_DIR), so a
new stage is a new file. Each file is read once per invocation: the spec keeps the text it was
parsed from, and that text is what every worker trains from and what MLflow records.

This module imports no framework: every backend reads the same spec object.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import stat
import tomllib
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from bench.core.datasets import DATASETS, get_dataset
from bench.core.datasets.dataset import Dataset
from bench.core.errors import BenchError

STAGES_DIR = Path(__file__).parent / "stages"
STAGES_DIR_ENV = "MLP_BENCH_STAGES_DIR"
# Every stage's epochs when --epochs is not given: a quick look at the whole matrix with the
# command typed as documented (`MLP_BENCH_EPOCHS=1 nox -s bench`).
EPOCHS_ENV = "MLP_BENCH_EPOCHS"
STAGE_FILE_FIX = "fix the stage file"
# Upper bounds that keep a typo from reaching a worker as a MemoryError or an overflow.
MAX_EPOCHS = 10_000
MAX_UNITS = 65_536
MAX_HIDDEN_LAYERS = 32
MAX_WEIGHTS = 100_000_000  # 400 MB in float32; Adam keeps three more copies
MAX_LEARNING_RATE = 1000.0
MAX_INIT_STD = 1000.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# MLflow cuts a param's value to 6,000 characters (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH),
# after which `reproduce` finds the record at odds with its stage text. The spec imports no mlflow,
# so the number is repeated here; tests/test_spec.py checks it against MLflow's.
MAX_PARAM_LENGTH = 6000


class _Invalid(Exception):
    """A problem in a stage text; parse_stage adds where it is and how to fix it."""


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
    # A registered data set (bench.core.datasets); a stage file that leaves it out means MNIST.
    dataset: str = field(default="mnist", kw_only=True)
    # Must be the data set's own split, by its name: the stage's expectations were set on it.
    validation: str
    scale: Literal["divide_by_255"]


@dataclass(frozen=True)
class ExpectedSpec:
    """What the tutorial reported and what this project's regression test demands; a stage
    the tutorial never ran says `expect = "no_reference"` and gives neither."""

    expect: Literal["min_test_accuracy", "does_not_learn", "no_reference"]
    tutorial_reported: str | None = None
    rule: str | None = None
    tutorial_test_accuracy: float | None = None
    min_test_accuracy: float | None = None

    def met_by(self, outcome: str, test_accuracy: float | None) -> bool:
        """Whether a cell's outcome meets this stage's regression expectation (a stage
        without a reference expects nothing)."""
        if self.expect == "no_reference":
            return True
        if self.expect == "does_not_learn":
            return outcome != "converged"
        assert self.min_test_accuracy is not None  # guaranteed by validation
        return outcome == "converged" and (test_accuracy or 0.0) >= self.min_test_accuracy

    def describe(self) -> str:
        if self.expect == "no_reference":
            return "-"
        if self.expect == "does_not_learn":
            return "does not learn"
        return f">= {100 * (self.min_test_accuracy or 0.0):.2f}%"

    @property
    def tutorial(self) -> str:
        """The tutorial's number as a table shows it: "-" for a stage it never ran."""
        return self.tutorial_reported or "-"


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
    # Where `bench list` and a default run put the stage: the tutorial's stage number.
    order: int | None = None
    # false: the stage runs only when named (--stage), so that a default run, and the tests
    # generated over STAGE_NAMES, stay the tutorial's stages on MNIST.
    run_by_default: bool = True
    # The text this spec was parsed from, not a TOML key: workers train from it and MLflow
    # records it, so params, artifact and training cannot disagree.
    text: str = field(default="", repr=False, compare=False, metadata={"toml": False})

    def flat(self) -> dict[str, str]:
        """The spec as dotted keys -> strings, for MLflow params."""
        return _flatten(dataclasses.asdict(self))

    @property
    def n_layers(self) -> int:
        return len(self.model.layer_sizes) - 1

    @property
    def dataset(self) -> Dataset:
        """The data set it trains on (checked against the registry when parsed)."""
        return get_dataset(self.data.dataset)

    @property
    def file_epochs(self) -> int:
        """The epochs its text gives, which its expectation was set for (--epochs may
        override training.epochs)."""
        return int(tomllib.loads(self.text)["training"]["epochs"])


T = TypeVar("T")
# Prose and bookkeeping, not settings: left out of the MLflow params.
_NOT_PARAMS = ("description", "tutorial_deviations", "rule", "order", "run_by_default", "text")


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        elif value is not None and key not in _NOT_PARAMS:
            flat[name] = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
    return flat


def _check_value(value: Any, hint: Any, key: str) -> Any:
    """Check one TOML value against a type hint; return it converted (lists -> tuples)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [h for h in typing.get_args(hint) if h is not type(None)]
        return _check_value(value, options[0], key)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise _Invalid(f"{key} = {value!r} is not one of {list(allowed)}")
        return value
    if origin is tuple:
        item = typing.get_args(hint)[0]
        if not isinstance(value, list):
            raise _Invalid(f"{key} must be a list")
        return tuple(_check_value(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise _Invalid(f"{key} must be a table")
        return _build(typing.cast(type[Any], hint), value, f"{key}.")
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        # TOML spells nan and inf; no setting of a stage means either.
        if not math.isfinite(value):
            raise _Invalid(f"{key} = {value} is not a finite number")
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    raise _Invalid(f"{key} = {value!r} has type {type(value).__name__}, expected {hint.__name__}")


def _build(cls: type[T], table: dict[str, Any], prefix: str) -> T:
    """Build a frozen dataclass from a TOML table, rejecting unknown and missing keys;
    `prefix` is the table's dotted key ("training.")."""
    fields = {
        f.name: f for f in dataclasses.fields(typing.cast(Any, cls)) if f.metadata.get("toml", True)
    }
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(table) - set(fields))
    if unknown:
        raise _Invalid(f"unknown key {prefix}{unknown[0]} (allowed: {', '.join(fields)})")
    values = {}
    for name, spec_field in fields.items():
        if name in table:
            values[name] = _check_value(table[name], hints[name], f"{prefix}{name}")
        elif spec_field.default is dataclasses.MISSING:
            raise _Invalid(f"missing key {prefix}{name}")
    return cls(**values)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise _Invalid(message)


def _in_range(key: str, value: float, interval: str) -> None:
    """Check `value` against an interval written as in mathematics: "[0, 1)", "(0, 1000]"."""
    low_text, high_text = interval[1:-1].split(", ")
    low, high = float(low_text), float(high_text)
    above_low = value > low if interval[0] == "(" else value >= low
    below_high = value < high if interval[-1] == ")" else value <= high
    _require(above_low and below_high, f"{key} = {value!r} is outside {interval}")


def _validate_data(data: DataSpec) -> Dataset:
    """The stage's data set, which must be registered and split as the stage says."""
    _require(
        data.dataset in DATASETS,
        f"data.dataset = {data.dataset!r} is not a known data set"
        f" (choose from {', '.join(DATASETS)})",
    )
    dataset = DATASETS[data.dataset]
    _require(
        data.validation == dataset.validation,
        f"data.validation = {data.validation!r}, but {dataset.title} holds out"
        f" {dataset.validation!r}",
    )
    return dataset


def _validate_model(model: ModelSpec, dataset: Dataset) -> None:
    sizes = model.layer_sizes
    _require(
        2 <= len(sizes) <= MAX_HIDDEN_LAYERS + 2,
        f"model.layer_sizes has {len(sizes)} entries; give 2 to {MAX_HIDDEN_LAYERS + 2}"
        f" (inputs, up to {MAX_HIDDEN_LAYERS} hidden layers, outputs)",
    )
    _require(
        sizes[0] == dataset.input_size and sizes[-1] == dataset.classes,
        f"model.layer_sizes {list(sizes)}: {dataset.title} needs {dataset.input_size} inputs"
        f" and {dataset.classes} outputs",
    )
    for i, units in enumerate(sizes):
        _in_range(f"model.layer_sizes[{i}]", units, f"[1, {MAX_UNITS}]")
    weights = sum(a * b for a, b in itertools.pairwise(sizes))
    _require(
        weights <= MAX_WEIGHTS,
        f"model.layer_sizes {list(sizes)} has {weights:,} weights, more than {MAX_WEIGHTS:,}",
    )
    _in_range("model.dropout_rate", model.dropout_rate, "[0, 1)")


def _validate_init(init: InitsSpec) -> None:
    for part in ("weights", "biases"):
        spec: InitSpec = getattr(init, part)
        _require(
            (spec.std is not None) == (spec.kind == "normal"),
            f"init.{part}.std is needed for 'normal' and only for it",
        )
        if spec.std is not None:
            _in_range(f"init.{part}.std", spec.std, f"(0, {MAX_INIT_STD:g}]")


def _validate_optimizer(opt: OptimizerSpec) -> None:
    adam_keys = (opt.beta1, opt.beta2, opt.epsilon)
    is_adam = opt.name == "adam"
    _require(
        all(k is not None for k in adam_keys) if is_adam else all(k is None for k in adam_keys),
        "optimizer beta1, beta2, epsilon are needed for adam and only for it",
    )
    _in_range("optimizer.learning_rate", opt.learning_rate, f"(0, {MAX_LEARNING_RATE:g}]")
    if is_adam:
        assert opt.beta1 is not None and opt.beta2 is not None and opt.epsilon is not None
        # A beta of 1 never forgets and divides by 1 - beta^t = 0.
        _in_range("optimizer.beta1", opt.beta1, "[0, 1)")
        _in_range("optimizer.beta2", opt.beta2, "[0, 1)")
        _in_range("optimizer.epsilon", opt.epsilon, "(0, 1]")


def _validate_training(training: TrainingSpec, dataset: Dataset) -> None:
    _in_range("training.epochs", training.epochs, f"[1, {MAX_EPOCHS}]")
    # Batches are drawn from the training split; a larger batch has no samples to fill it.
    _in_range("training.batch_size", training.batch_size, f"[1, {dataset.split.train.size}]")


def _validate_expected(exp: ExpectedSpec) -> None:
    referenced = exp.expect != "no_reference"
    # An expectation may be calibrated where the tutorial reported nothing (another data set);
    # its rule then says how it was measured.
    _require(
        exp.tutorial_reported is None or referenced,
        "expected.tutorial_reported is not allowed with no_reference",
    )
    _require(
        exp.tutorial_reported is not None or not referenced or bool(exp.rule),
        f"expected.rule is needed to say how a {exp.expect} expectation the tutorial did not"
        " report was calibrated",
    )
    _require(
        referenced or exp.tutorial_test_accuracy is None,
        "expected.tutorial_test_accuracy is not allowed with no_reference",
    )
    _require(
        (exp.min_test_accuracy is not None) == (exp.expect == "min_test_accuracy"),
        "expected.min_test_accuracy is needed for min_test_accuracy and only for it",
    )
    for key in ("tutorial_test_accuracy", "min_test_accuracy"):
        value = getattr(exp, key)
        if value is not None:
            _in_range(f"expected.{key}", value, "[0, 1]")


def _validate(spec: StageSpec) -> None:
    """Ranges and checks across fields that the type hints cannot express."""
    _require(
        _NAME.fullmatch(spec.name) is not None,
        f"name = {spec.name!r}: use 1 to 64 letters, digits, '.', '_' or '-',"
        " starting with a letter or digit",
    )
    dataset = _validate_data(spec.data)
    _validate_model(spec.model, dataset)
    _validate_init(spec.init)
    _validate_optimizer(spec.optimizer)
    _validate_training(spec.training, dataset)
    _validate_expected(spec.expected)
    _validate_params(spec)


def _validate_params(spec: StageSpec) -> None:
    """Every setting must fit an MLflow param whole: a cut one is a record that disagrees."""
    for key, value in spec.flat().items():
        _require(
            len(value) <= MAX_PARAM_LENGTH,
            f"{key} is {len(value)} characters long, more than the {MAX_PARAM_LENGTH} that"
            " MLflow records of a setting",
        )


def parse_stage(text: str, where: str, fix: str = STAGE_FILE_FIX) -> StageSpec:
    """Parse and validate a stage's text; `where` names it in errors, `fix` says what to do."""
    try:
        spec = _build(StageSpec, tomllib.loads(text), "")
        _validate(spec)
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"{where} is not valid TOML ({exc}); {fix}") from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively; no stage nests deeper
        # than two tables, so this is never a stage, only a stack overflow to report.
        raise BenchError(
            f"{where} nests arrays or tables too deeply to be read (a stage nests two deep); {fix}"
        ) from None
    except _Invalid as exc:
        raise BenchError(f"{where}: {exc}; {fix}") from None
    return dataclasses.replace(spec, text=text)


# What a path that is not a regular file is, by its stat mode, for the message.
_NOT_REGULAR = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def _read(path: Path, what: str, fix: str) -> str:
    """A stage file's text; only a regular file is opened, since reading a FIFO or a device
    (/dev/zero, a terminal) would wait or fill memory for ever."""
    try:
        kind = stat.S_IFMT(path.stat().st_mode)
        if kind != stat.S_IFREG:
            raise BenchError(
                f"{what} {path} is {_NOT_REGULAR.get(kind, 'not a file')}, not a regular file;"
                f" {fix}"
            )
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise BenchError(f"cannot read {what} {path} ({reason}); {fix}") from None


def stages_dir() -> Path:
    """Where stages are found: bench/core/stages/, or the folder in MLP_BENCH_STAGES_DIR."""
    return Path(os.environ.get(STAGES_DIR_ENV) or STAGES_DIR)


def _read_stage(path: Path) -> StageSpec:
    """A stage of the stages folder: valid, and named as its file."""
    spec = parse_stage(_read(path, "stage file", STAGE_FILE_FIX), path.name)
    if spec.name != path.stem:
        raise BenchError(
            f"{path.name} declares name {spec.name!r}; make it {path.stem!r} (its file name)"
        )
    return spec


@dataclass(frozen=True)
class StageFile:
    """One file of the stages folder: its spec, or the one-line reason it is invalid."""

    name: str  # the file name without .toml
    path: Path
    spec: StageSpec | None
    error: str | None


def discover_stages(directory: Path | None = None) -> list[StageFile]:
    """Every `*.toml` of the stages folder, valid ones by their `order`, then the rest by
    name. An invalid file is listed with its reason; it never hides the others."""
    found = []
    for path in sorted((directory or stages_dir()).glob("*.toml")):
        try:
            found.append(StageFile(path.stem, path, _read_stage(path), None))
        except BenchError as exc:
            found.append(StageFile(path.stem, path, None, str(exc)))
    return sorted(found, key=_position)


def _position(stage: StageFile) -> tuple[bool, float, str]:
    order = stage.spec.order if stage.spec is not None else None
    return (order is None, math.inf if order is None else order, stage.name)


def _by_default(stage: StageFile) -> bool:
    """Whether a default run (no --stage) runs it; an invalid file is shown to fail there."""
    return stage.spec is None or stage.spec.run_by_default


# The stages shipped with the project that a default run runs, in the tutorial's order (found
# on disk, not listed); ALL_STAGE_NAMES adds those that run only when named.
ALL_STAGE_NAMES = tuple(stage.name for stage in discover_stages(STAGES_DIR))
STAGE_NAMES = tuple(stage.name for stage in discover_stages(STAGES_DIR) if _by_default(stage))


def _valid(found: dict[str, StageFile], name: str) -> StageSpec:
    """The named stage of a discovered folder, or the one line that says why it cannot run."""
    if name not in found:
        choices = ", ".join(s for s, stage in found.items() if stage.spec) or "(none)"
        raise BenchError(
            f"unknown stage {name!r} in {stages_dir()}; choose from {choices},"
            " or give a stage file with --stage-file"
        )
    stage = found[name]
    if stage.spec is None:
        raise BenchError(f"stage {name!r} cannot run: {stage.error}")
    return stage.spec


def load_stage(name: str) -> StageSpec:
    """Load a named stage from the stages folder."""
    return _valid({stage.name: stage for stage in discover_stages()}, name)


def select_stages(
    names: Sequence[str], files: Sequence[str], epochs: int | None
) -> dict[str, StageSpec]:
    """An invocation's stages, each file read once: the named ones (default: every stage of
    the stages folder that runs by default, when no --stage-file is given either), then each
    --stage-file."""
    found = {stage.name: stage for stage in discover_stages()}
    if not (names or files or found):
        raise BenchError(
            f"no stage files (*.toml) in {stages_dir()}; point {STAGES_DIR_ENV} at a folder of"
            " them, or give --stage-file"
        )
    chosen = names if names or files else [n for n, stage in found.items() if _by_default(stage)]
    specs = {name: _valid(found, name) for name in dict.fromkeys(chosen)}
    for file in files:
        spec = parse_stage(_read(Path(file), "--stage-file", "check the path"), file)
        if spec.name in found or spec.name in specs:
            raise BenchError(
                f"--stage-file {file} is named {spec.name!r}, as another stage; give its"
                " `name` key a name of its own"
            )
        specs[spec.name] = spec
    return {name: with_epochs(spec, epochs) for name, spec in specs.items()}


def epochs_from_env() -> int | None:
    """MLP_BENCH_EPOCHS as a count in 1..MAX_EPOCHS, or None where it is unset or empty."""
    text = os.environ.get(EPOCHS_ENV, "").strip()
    if not text:
        return None
    try:
        epochs = int(text)
    except ValueError:
        epochs = 0
    if not 1 <= epochs <= MAX_EPOCHS:
        raise BenchError(
            f"{EPOCHS_ENV}={text!r} is not an epoch count; set it to 1..{MAX_EPOCHS}, or unset"
            " it for the stage files' epochs"
        )
    return epochs


def with_epochs(spec: StageSpec, epochs: int | None) -> StageSpec:
    """The spec with the epoch count overridden (from --epochs), or unchanged."""
    if epochs is None:
        return spec
    if not 1 <= epochs <= MAX_EPOCHS:
        raise BenchError(f"epochs {epochs} is outside 1..{MAX_EPOCHS}; give a count in it")
    training = dataclasses.replace(spec.training, epochs=epochs)
    return dataclasses.replace(spec, training=training)
