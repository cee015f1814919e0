from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.core.datasets.mnist import MNIST
from bench.core.errors import BenchError
from bench.core.spec import (
    ALL_STAGE_NAMES,
    MAX_PARAM_LENGTH,
    STAGE_NAMES,
    STAGES_DIR,
    STAGES_DIR_ENV,
    discover_stages,
    load_stage,
    parse_stage,
    select_stages,
    with_epochs,
)


@pytest.mark.parametrize("name", STAGE_NAMES)
def test_every_stage_loads_with_the_tutorial_setup(name: str) -> None:
    spec = load_stage(name)
    assert spec.name == name
    assert spec.model.layer_sizes == (784, 256, 256, 10)
    assert spec.training.epochs == 30 and spec.training.batch_size == 100
    assert spec.init.biases.kind == "normal" and spec.init.biases.std == 1.0
    assert "tf.cost" in spec.tutorial_deviations


def test_stage_differences_are_the_tutorial_ones() -> None:
    normal, xavier, adam, dropout = (load_stage(n) for n in STAGE_NAMES)
    assert normal.init.weights.kind == "normal" and normal.init.weights.std == 1.0
    assert xavier.init.weights.kind == "glorot_uniform"
    assert (adam.optimizer.name, adam.optimizer.learning_rate) == ("adam", 0.01)
    assert (adam.optimizer.beta1, adam.optimizer.beta2, adam.optimizer.epsilon) == (
        0.9,
        0.999,
        1e-8,
    )
    assert dropout.model.dropout_rate == 0.3 and xavier.model.dropout_rate == 0.0
    assert xavier.optimizer.learning_rate == 0.1
    assert normal.expected.expect == "does_not_learn"
    for spec in (xavier, adam, dropout):
        assert spec.expected.min_test_accuracy is not None
        assert 0.9 < spec.expected.min_test_accuracy <= (spec.expected.tutorial_test_accuracy or 1)


def test_spec_is_frozen() -> None:
    spec = load_stage("adam")
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]


def _text(name: str = "relu-xavier") -> str:
    return (STAGES_DIR / f"{name}.toml").read_text()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("[training]\n", "[training]\nwarmup = 3\n", "x.toml: unknown key training.warmup"),
        ("epochs = 30", 'epochs = "30"', "training.epochs = '30' has type str, expected int"),
        ("learning_rate = 0.1", "learning_rate = true", "optimizer.learning_rate = True"),
        ('kind = "glorot_uniform"', 'kind = "he"', "init.weights.kind = 'he' is not one of"),
        ("batch_size = 100\n", "", "x.toml: missing key training.batch_size"),
        ("dropout_rate = 0.0", "dropout_rate = 1.5", "dropout_rate = 1.5 is outside [0, 1)"),
        ('kind = "glorot_uniform"', 'kind = "normal"', "init.weights.std is needed"),
        ("[optimizer]\n", "[optimizer]\nbeta1 = 0.9\n", "needed for adam and only for it"),
        ("epochs = 30", "epochs = 0", "training.epochs = 0 is outside [1, 10000]"),
        ("784, 256, 256, 10", "784, 256, 256, 9", "MNIST needs 784 inputs and 10 outputs"),
        ("784, 256, 256, 10", "28, 256, 256, 10", "[28, 256, 256, 10]: MNIST needs 784 inputs"),
        (
            'dataset = "mnist"',
            'dataset = "cifar10"',
            "data.dataset = 'cifar10' is not a known data set (choose from mnist, fashion-mnist)",
        ),
        (
            'validation = "first_5000_train"',
            'validation = "last_5000_train"',
            "data.validation = 'last_5000_train', but MNIST holds out 'first_5000_train'",
        ),
        (
            "batch_size = 100",
            "batch_size = 55001",
            "training.batch_size = 55001 is outside [1, 55000]",
        ),
        ("name = ", "name = = ", "is not valid TOML"),
        ("order = 2", "order = 2.5", "order = 2.5 has type float, expected int"),
        ('expect = "min_test_accuracy"', 'expect = "no_reference"', "not allowed with no_ref"),
    ],
)
def test_bad_stage_files_are_rejected_with_one_line(old: str, new: str, message: str) -> None:
    text = _text()
    assert old in text
    with pytest.raises(BenchError) as info:
        parse_stage(text.replace(old, new, 1), "x.toml")
    assert message in str(info.value) and str(info.value).endswith("; fix the stage file")
    assert "\n" not in str(info.value)


def test_a_calibrated_expectation_without_a_tutorial_figure_needs_its_rule() -> None:
    """A stage on a data set the tutorial never ran (Fashion-MNIST) has a calibrated
    expectation and no tutorial figure; its rule must say how it was set."""
    text = _text().replace('tutorial_reported = "98.02%"\n', "")
    text = text.replace("tutorial_test_accuracy = 0.9802\n", "")
    assert parse_stage(text, "x.toml").expected.min_test_accuracy == 0.975
    no_rule = text[: text.index('rule = """')]
    with pytest.raises(BenchError, match=r"expected\.rule is needed to say how a min_test_acc"):
        parse_stage(no_rule, "x.toml")
    normal = _text("relu-normal").replace('tutorial_reported = "cost becomes NaN"\n', "")
    assert parse_stage(normal, "x.toml").expected.expect == "does_not_learn"
    no_rule = normal[: normal.index('rule = """')]
    with pytest.raises(BenchError, match=r"expected\.rule is needed to say how a does_not_learn"):
        parse_stage(no_rule, "x.toml")


def test_a_stage_without_a_data_set_trains_on_mnist() -> None:
    """Stage files written before there was a choice of data set stay valid."""
    text = _text()
    spec = parse_stage(text.replace('dataset = "mnist"\n', ""), "x.toml")
    assert spec.data.dataset == "mnist" and spec.dataset is MNIST
    assert spec.flat()["data.dataset"] == "mnist"
    assert spec.flat() == parse_stage(text, "x.toml").flat()


def test_a_stage_keeps_the_text_it_was_parsed_from() -> None:
    """Workers train from this text and MLflow records it."""
    text = _text()
    spec = parse_stage(text, "x.toml")
    assert spec.text == text and "text" not in spec.flat() and "order" not in spec.flat()
    assert with_epochs(spec, 2).text == text and with_epochs(spec, 2).file_epochs == 30
    with pytest.raises(BenchError, match="unknown key text"):
        parse_stage('text = "x"\n' + text, "x.toml")


def test_no_reference_expects_nothing_and_shows_a_dash() -> None:
    table = _text().split("[expected]")[0] + '[expected]\nexpect = "no_reference"\n'
    expected = parse_stage(table, "x.toml").expected
    assert (expected.tutorial, expected.describe()) == ("-", "-")
    assert expected.met_by("did-not-learn", 0.1)


def _stages_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / f"{name}.toml").write_text(text)
    return tmp_path


def test_stages_are_found_on_disk_in_their_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new stage is a new file; `order` places it; a broken file breaks only itself."""
    new = (
        _text()
        .replace('name = "relu-xavier"', 'name = "a-new-one"')
        .replace("order = 2", "order = 0")
    )
    folder = _stages_dir(
        tmp_path,
        {"relu-xavier": _text(), "a-new-one": new, "broken": "name = = ", "late": _text("adam")},
    )
    monkeypatch.setenv(STAGES_DIR_ENV, str(folder))
    found = discover_stages()
    assert [s.name for s in found] == ["a-new-one", "relu-xavier", "broken", "late"]
    assert found[2].spec is None and "broken.toml is not valid TOML" in str(found[2].error)
    assert "declares name 'adam'; make it 'late'" in str(found[3].error)
    assert load_stage("a-new-one").name == "a-new-one"
    assert list(select_stages(["relu-xavier"], [], None)) == ["relu-xavier"]
    with pytest.raises(BenchError, match=r"stage 'broken' cannot run: broken\.toml is not valid"):
        select_stages(["broken"], [], None)
    with pytest.raises(BenchError, match="stage 'broken' cannot run"):
        select_stages([], [], None)  # every stage of the folder: the broken one too
    with pytest.raises(BenchError, match="choose from a-new-one, relu-xavier, or give"):
        load_stage("adam")


def test_an_empty_stages_folder_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(STAGES_DIR_ENV, str(tmp_path / "nothing-here"))
    assert discover_stages() == []
    with pytest.raises(BenchError, match="no stage files"):
        select_stages([], [], None)


def test_builtin_stages_keep_the_tutorials_order() -> None:
    assert STAGE_NAMES == ("relu-normal", "relu-xavier", "adam", "dropout")
    orders = [s.spec.order for s in discover_stages(STAGES_DIR) if s.spec]
    assert orders == [1, 2, 3, 4, 11, 12, 13, 14]


def test_the_fashion_stages_are_the_tutorials_on_fashion_mnist_run_when_named() -> None:
    """The same settings but the data set; not in a default run, nor in STAGE_NAMES."""
    assert (*STAGE_NAMES, *(f"fashion-{name}" for name in STAGE_NAMES)) == ALL_STAGE_NAMES
    for name in STAGE_NAMES:
        mnist, fashion = load_stage(name), load_stage(f"fashion-{name}")
        assert mnist.run_by_default and not fashion.run_by_default
        assert fashion.dataset.title == "Fashion-MNIST"
        assert fashion.expected.tutorial_reported is None  # the tutorial ran MNIST only
        settings = {k: v for k, v in fashion.flat().items() if not k.startswith("expected.")}
        assert settings == {
            **{k: v for k, v in mnist.flat().items() if not k.startswith("expected.")},
            "name": f"fashion-{name}",
            "data.dataset": "fashion-mnist",
        }
    assert list(select_stages([], [], None)) == list(STAGE_NAMES)
    both = select_stages(["relu-xavier", "fashion-relu-xavier"], [], None)
    assert [spec.dataset.name for spec in both.values()] == ["mnist", "fashion-mnist"]


def test_a_stage_file_of_ones_own(tmp_path: Path) -> None:
    mine = tmp_path / "mine.toml"
    mine.write_text(_text().replace('name = "relu-xavier"', 'name = "mine"'))
    specs = select_stages(["adam"], [str(mine)], 3)
    assert list(specs) == ["adam", "mine"] and specs["mine"].training.epochs == 3
    assert list(select_stages([], [str(mine)], None)) == ["mine"]  # only the file
    clash = tmp_path / "clash.toml"
    clash.write_text(_text())
    with pytest.raises(BenchError, match="is named 'relu-xavier', as another stage"):
        select_stages([], [str(clash)], None)
    with pytest.raises(BenchError, match="is named 'mine', as another stage"):
        select_stages([], [str(mine), str(mine)], None)
    with pytest.raises(BenchError, match=r"cannot read --stage-file .*; check the path"):
        select_stages([], [str(tmp_path / "nope.toml")], None)


def _bench(*args: str, stages: Path | None = None) -> tuple[int, list[str]]:
    """`python -m bench ARGS` in a subprocess: its exit code and output lines. The timeout
    turns a hang into a failure."""
    env = {**os.environ, **({STAGES_DIR_ENV: str(stages)} if stages else {})}
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args], capture_output=True, text=True, timeout=30, env=env
    )
    return done.returncode, (done.stdout + done.stderr).splitlines()


@pytest.fixture
def unreadable_stages(tmp_path: Path) -> Path:
    """A stages folder with a FIFO and a file nested 100,000 deep, both named *.toml."""
    folder = tmp_path / "stages"
    folder.mkdir()
    os.mkfifo(folder / "fifo.toml")
    (folder / "deep.toml").write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    return folder


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("fifo", "is a FIFO (named pipe), not a regular file; check the path"),
        ("deep", "deep.toml nests arrays or tables too deeply to be read"),
    ],
    ids=["fifo", "deep"],
)
def test_a_stage_file_that_cannot_be_a_stage_is_one_line(
    unreadable_stages: Path, name: str, message: str
) -> None:
    """A FIFO given as --stage-file hung for ever, a file nested 100,000 deep was a
    RecursionError traceback."""
    code, lines = _bench("run", "--stage-file", str(unreadable_stages / f"{name}.toml"))
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: ") and message in lines[0]


def test_list_shows_a_fifo_and_a_deep_file_as_invalid(unreadable_stages: Path) -> None:
    """Both hung or crashed `list` from the stages folder; each is one INVALID line."""
    code, lines = _bench("list", stages=unreadable_stages)
    assert code == 0, lines
    invalid = [line.split() for line in lines if "INVALID" in line]
    assert [(words[0], words[1]) for words in invalid] == [
        ("deep", "INVALID:"),
        ("fifo", "INVALID:"),
    ]
    assert "FIFO (named pipe), not a regular file" in " ".join(invalid[1])


def _with_reported(length: int) -> str:
    """relu-xavier as "mine", its tutorial_reported `length` characters long."""
    text = _text().replace('name = "relu-xavier"', 'name = "mine"')
    return text.replace('"98.02%"', '"' + "9" * length + '"')


def test_a_setting_longer_than_mlflow_keeps_is_refused(tmp_path: Path) -> None:
    """MLflow cut a 7,006-character param to 6,000, and `reproduce` then called the record
    inconsistent. Refused when the stage is read, naming the key, its length and the limit."""
    spec = parse_stage(_with_reported(MAX_PARAM_LENGTH), "x.toml")
    assert len(spec.flat()["expected.tutorial_reported"]) == MAX_PARAM_LENGTH
    mine = tmp_path / "mine.toml"
    mine.write_text(_with_reported(MAX_PARAM_LENGTH + 1))
    # The data dir does not exist: only a stage that is refused first keeps this one line.
    code, lines = _bench("run", "--stage-file", str(mine), "--data-dir", str(tmp_path / "no"))
    assert (code, lines) == (
        2,
        [
            f"error: {mine}: expected.tutorial_reported is 6001 characters long, more than the"
            " 6000 that MLflow records of a setting; fix the stage file"
        ],
    )


def test_the_param_limit_is_mlflows() -> None:
    validation = pytest.importorskip("mlflow.utils.validation")
    assert validation.MAX_PARAM_VAL_LENGTH == MAX_PARAM_LENGTH


def test_epochs_override() -> None:
    spec = load_stage("dropout")
    assert with_epochs(spec, None) is spec
    assert with_epochs(spec, 3).training.epochs == 3
    for bad in (0, 10_001):
        with pytest.raises(BenchError, match=f"epochs {bad} is outside 1..10000"):
            with_epochs(spec, bad)


def test_flat_params_name_every_setting() -> None:
    flat = load_stage("adam").flat()
    assert flat["optimizer.epsilon"] == "1e-08"
    assert flat["model.layer_sizes"] == "784,256,256,10"
    assert flat["init.weights.kind"] == "glorot_uniform"
    assert all(isinstance(v, str) for v in flat.values())


@pytest.mark.parametrize(
    ("outcome", "accuracy", "stage", "met"),
    [
        ("converged", 0.99, "relu-xavier", True),
        ("converged", 0.90, "relu-xavier", False),
        ("diverged", 0.99, "relu-xavier", False),
        ("diverged", 0.098, "relu-normal", True),
        ("did-not-learn", 0.3, "relu-normal", True),
        ("converged", 0.9, "relu-normal", False),
    ],
)
def test_expectation(outcome: str, accuracy: float, stage: str, met: bool) -> None:
    assert load_stage(stage).expected.met_by(outcome, accuracy) is met
