"""The options object: named as the command line's flags, recorded and read back by its fields,
each field declaring its effect and, where only some frameworks have it, which."""

from __future__ import annotations

import dataclasses

import pytest

from backends import BACKENDS
from bench.commands.cli import build_parser
from bench.core.errors import BenchError
from bench.core.options import EFFECTS, Options, framework_options, normalised, option_params
from bench.recording import verdict

RECORDED = [f.name for f in dataclasses.fields(Options) if "recorded" in f.metadata]
# A value other than the default for every recorded field, as a command line would give it.
CHANGED = {
    "threads": 3,
    "parity": True,
    "dtype": "float64",
    "accumulate": "native",
    "nondeterministic": True,
    "tf32": True,
    "inter_op_threads": 2,
    "no_xla": True,
    "cuda_graphs": True,
    "torch_matmul": "onednn",
}


def _destinations(command: str) -> set[str]:
    parser = build_parser()
    [commands] = [a for a in parser._actions if a.dest == "command"]
    return {action.dest for action in commands.choices[command]._actions}  # type: ignore[attr-defined]


def test_every_option_is_named_as_its_flag_and_every_flag_reaches_it() -> None:
    """`run` gives every recorded option by its field's name, so from_args needs no mapping."""
    assert set(RECORDED) <= _destinations("run")
    assert set(CHANGED) == set(RECORDED), "a new recorded option needs a value in CHANGED"


def test_from_args_takes_the_command_line_by_name() -> None:
    args = build_parser().parse_args(
        ["run", "--no-xla", "--nondeterministic", "--dtype", "float64"]
    )
    options = Options.from_args(args, data_dir="d", threads=4)
    assert options.no_xla and not options.xla and options.nondeterministic
    assert options.dtype == "float64" and options.threads == 4
    assert options.accumulate == "float64"  # unset on the command line: the field's default


@pytest.mark.parametrize("backend", [*BACKENDS, None])
def test_recorded_options_read_back(backend: str | None) -> None:
    """Every recorded field survives record -> from_record, except another framework's."""
    options = Options(data_dir="d", epochs=4, **CHANGED)  # type: ignore[arg-type]
    params = {**options.record(backend), "training.epochs": "4"}
    again = Options.from_record(params, "d")
    owners = framework_options()
    for name in RECORDED:
        theirs = backend is not None and name in owners and backend not in owners[name]
        expected = getattr(Options(data_dir="d", threads=1), name) if theirs else CHANGED[name]
        assert getattr(again, name) == expected, name
    assert again.epochs == 4 and again.data_dir == "d"


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_option_of_another_framework_is_recorded_not_applicable(backend: str) -> None:
    """A TensorFlow cell of an invocation with --cuda-graphs ran no CUDA graph."""
    record = Options(data_dir="d", **CHANGED).record(backend)  # type: ignore[arg-type]
    for option, owners in framework_options().items():
        assert (record[f"option.{option}"] == "n/a") == (backend not in owners), option
    # The invocation's own record (the parent run) keeps what was asked of every framework.
    assert "n/a" not in Options(data_dir="d", **CHANGED).record().values()  # type: ignore[arg-type]


def test_framework_options_are_recorded_fields() -> None:
    """An option's cells of other frameworks record it "n/a": only a recorded field can be."""
    for option in framework_options():
        assert option in RECORDED, f"{option} names its frameworks but is not recorded"


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Options)])
def test_every_field_says_what_it_changes(name: str) -> None:
    """compare refuses sides that differ in what changes results and lists what changes only
    speed: it reads both from the fields, so a field without its effect would be neither."""
    [found] = [f for f in dataclasses.fields(Options) if f.name == name]
    assert found.metadata.get("effect") in EFFECTS, (
        f"Options.{name} says nothing of its effect: declare it with"
        f" field(metadata=option({' | '.join(map(repr, EFFECTS))}, ...))"
    )


def test_compare_reads_each_options_effect_from_its_field() -> None:
    assert option_params("results") == verdict.NUMERIC_OPTIONS
    assert option_params("speed") == verdict.SPEED_OPTIONS
    assert set(verdict.NUMERIC_OPTIONS) == {"option.dtype", "option.parity", "option.accumulate"}


def test_an_older_record_reads_under_the_current_names() -> None:
    """Before the fields were named as the flags: option.deterministic, option.xla and
    option.parity_accumulate; before inter_op_threads, cuda_graphs and accumulate existed."""
    old = {
        "option.threads": "2",
        "option.parity": "true",
        "option.dtype": "float32",
        "option.deterministic": "true",
        "option.tf32": "false",
        "option.xla": "true",
        "training.epochs": "3",
    }
    options = Options.from_record(old, "d")
    assert not options.nondeterministic and options.xla and options.inter_op_threads == 1
    assert options.accumulate == "native" and not options.cuda_graphs
    assert options.torch_matmul == "mkl"  # the only path before the option
    assert normalised(old)["option.nondeterministic"] == "false"
    assert "option.deterministic" not in normalised(old)
    older = {k: v for k, v in old.items() if k != "option.xla"}  # before XLA was an option
    assert Options.from_record(older, "d").no_xla


def test_a_record_without_options_or_with_a_foreign_value_is_one_clear_error() -> None:
    with pytest.raises(BenchError, match="did not record its options"):
        Options.from_record({"training.epochs": "3"}, "d")
    bad = {**Options(data_dir="d", threads=2).record(), "training.epochs": "3"}
    with pytest.raises(BenchError, match=r"option.dtype is 'float16'"):
        Options.from_record({**bad, "option.dtype": "float16"}, "d")
