from __future__ import annotations

import pytest

from bench.errors import BenchError
from bench.spec import STAGE_NAMES, STAGES_DIR, load_stage, parse_stage, with_epochs


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
        ("[training]\n", "[training]\nwarmup = 3\n", "unknown key x.toml.training.warmup"),
        ("epochs = 30", 'epochs = "30"', "training.epochs = '30' has type str, expected int"),
        ("learning_rate = 0.1", "learning_rate = true", "optimizer.learning_rate = True"),
        ('kind = "glorot_uniform"', 'kind = "he"', "init.weights.kind = 'he' is not one of"),
        ("batch_size = 100\n", "", "missing key x.toml.training.batch_size"),
        ("dropout_rate = 0.0", "dropout_rate = 1.5", "dropout_rate must be in [0, 1)"),
        ('kind = "glorot_uniform"', 'kind = "normal"', "init.weights.std is needed"),
        ("[optimizer]\n", "[optimizer]\nbeta1 = 0.9\n", "needed for adam and only for it"),
        ("epochs = 30", "epochs = 0", "training.epochs must be >= 1"),
        ("784, 256, 256, 10", "784, 256, 256, 9", "MNIST needs 784 inputs, 10 outputs"),
        ("name = ", "name = = ", "is not valid TOML"),
    ],
)
def test_bad_stage_files_are_rejected_with_one_line(old: str, new: str, message: str) -> None:
    text = _text()
    assert old in text
    with pytest.raises(BenchError) as info:
        parse_stage(text.replace(old, new, 1), "x.toml")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_stage_name() -> None:
    with pytest.raises(BenchError, match="unknown stage 'relu-tanh'"):
        load_stage("relu-tanh")


def test_epochs_override() -> None:
    spec = load_stage("dropout")
    assert with_epochs(spec, None) is spec
    assert with_epochs(spec, 3).training.epochs == 3
    with pytest.raises(BenchError):
        with_epochs(spec, 0)


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
