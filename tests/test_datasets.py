"""Tests for bench.core.datasets: the registry, the descriptions' own checks, and a second data
set defined in this file alone that loads, validates and trains through the same code as MNIST."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from backends import installed_backends
from bench.core import data
from bench.core.datasets import DATASETS, get_dataset
from bench.core.datasets.dataset import DataFile, Dataset, Rows, Split
from bench.core.datasets.idx import read_idx, write_idx
from bench.core.datasets.mnist import MNIST, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, TRAIN_LABELS
from bench.core.errors import BenchError
from bench.core.options import Options
from bench.core.spec import STAGES_DIR, StageSpec, parse_stage
from bench.core.types import Cell
from bench.execution.parity_check import parity_options
from bench.execution.runner import run_cell

# --- the registry ---------------------------------------------------------------


@pytest.mark.parametrize("name", DATASETS)
def test_every_registered_data_set_is_consistent(name: str) -> None:
    """Generated over the registry: a new data set is checked without new test code."""
    dataset = get_dataset(name)
    assert dataset.name == name and dataset.problems() == []
    sizes = dataset.split.sizes
    assert all(count > 0 for count in sizes.values())
    files = {f.name: f for f in dataset.files}
    for rows in dataset.split.parts().values():
        images, labels = files[rows.images], files[rows.labels]
        assert rows.stop <= min(images.rows, labels.rows)
        assert int(np.prod(images.shape[1:])) == dataset.input_size
    # Each file's checksums as published: 64 (and 32) lower-case hex digits, none repeated.
    assert all(len(f.sha256) == 64 and f.sha256 == f.sha256.lower() for f in dataset.files)
    assert all(len(f.md5) in (0, 32) for f in dataset.files)
    assert len({f.sha256 for f in dataset.files}) == len(dataset.files)
    assert all(m.startswith(("https://", "http://")) for m in dataset.mirrors)


def test_mnist_is_the_tutorials() -> None:
    assert MNIST.split.sizes == {"train": 55_000, "val": 5_000, "test": 10_000}
    assert (MNIST.input_size, MNIST.classes) == (784, 10)
    # Validation is the first 5,000 training images, as the stage files say.
    assert MNIST.split.validation == Rows(TRAIN_IMAGES, TRAIN_LABELS, 0, 5000)
    assert MNIST.validation == "first_5000_train"


def test_an_unknown_data_set_is_one_line_naming_the_choices() -> None:
    with pytest.raises(
        BenchError, match=r"^unknown data set 'cifar10'; choose from mnist, fashion-mnist$"
    ):
        get_dataset("cifar10")


def _replace_split(**rows: Rows) -> Callable[[Dataset], Dataset]:
    return lambda d: dataclasses.replace(d, split=dataclasses.replace(d.split, **rows))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (
            _replace_split(validation=Rows(TRAIN_IMAGES, TRAIN_LABELS, 0, 5001)),
            "train and validation share rows of train-images-idx3-ubyte.gz",
        ),
        (_replace_split(test=Rows(TEST_IMAGES, TEST_LABELS, 0, 10001)), "rows 0:10001 are not in"),
        (
            _replace_split(test=Rows(TEST_IMAGES, "t10k-labels.gz", 0, 10)),
            "is not one of the files",
        ),
        (lambda d: dataclasses.replace(d, input_size=28), "is not N x 28"),
        (lambda d: dataclasses.replace(d, name="MNIST"), "name: use 1 to 32 lower-case"),
        (
            lambda d: dataclasses.replace(
                d, files=(dataclasses.replace(d.files[0], sha256="abc"), *d.files[1:])
            ),
            "sha256 must be 64 lower-case hex digits",
        ),
        (
            lambda d: dataclasses.replace(d, files=(*d.files, d.files[0])),
            "each name once",
        ),
    ],
    ids=["overlap", "past-the-end", "unknown-file", "input-size", "name", "sha256", "twice"],
)
def test_a_description_that_does_not_fit_together_fails_when_built(
    change: Callable[[Dataset], Dataset], problem: str
) -> None:
    with pytest.raises(ValueError, match=f"data set '(mnist|MNIST)': .*{problem}"):
        change(MNIST)


# --- a data set that plugs in from here alone ------------------------------------


@dataclass(frozen=True)
class Tiny:
    """The plugged-in data set, its folder, and the arrays its files were written from."""

    dataset: Dataset
    folder: Path
    images: npt.NDArray[np.uint8]  # all 800 images, 14x14
    labels: npt.NDArray[np.uint8]


@pytest.fixture
def tiny(data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Tiny:
    """800 of MNIST's test images halved to 14x14, written as four IDX files with their own
    checksums, described and registered for this test only. Its validation rows are the last
    100 of its training file (MNIST's are the first 5,000)."""
    images = read_idx(data_dir / TEST_IMAGES, 10000 * 28 * 28)[:800, ::2, ::2].copy()
    labels = read_idx(data_dir / TEST_LABELS, 10000)[:800]
    folder = tmp_path / "tiny"
    folder.mkdir()
    train_images, train_labels = "tiny-train-images.gz", "tiny-train-labels.gz"
    test_images, test_labels = "tiny-test-images.gz", "tiny-test-labels.gz"
    arrays = {
        train_images: images[:600],
        train_labels: labels[:600],
        test_images: images[600:],
        test_labels: labels[600:],
    }
    files = []
    for name, array in arrays.items():
        write_idx(folder / name, array)
        raw = (folder / name).read_bytes()
        files.append(DataFile(name, hashlib.sha256(raw).hexdigest(), len(raw), array.shape))
    dataset = Dataset(
        name="tiny",
        title="Tiny",
        files=tuple(files),
        mirrors=(),
        split=Split(
            train=Rows(train_images, train_labels, 0, 500),
            validation=Rows(train_images, train_labels, 500, 600),
            test=Rows(test_images, test_labels, 0, 200),
        ),
        validation="last_100_train",
        input_size=14 * 14,
        classes=10,
        parse=read_idx,
    )
    monkeypatch.setitem(DATASETS, "tiny", dataset)
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path / "cache"))
    return Tiny(dataset, folder, images, labels)


def _tiny_stage_text(layer_sizes: str = "[196, 32, 10]", **changes: str) -> str:
    """relu-xavier on the tiny data set, for 2 epochs, expecting nothing."""
    text = (STAGES_DIR / "relu-xavier.toml").read_text().split("[expected]")[0]
    text += '[expected]\nexpect = "no_reference"\n'
    replacements = {
        'name = "relu-xavier"': 'name = "tiny-stage"',
        "[784, 256, 256, 10]": layer_sizes,
        'dataset = "mnist"': 'dataset = "tiny"',
        'validation = "first_5000_train"': 'validation = "last_100_train"',
        "epochs = 30": "epochs = 2",
        **changes,
    }
    for old, new in replacements.items():
        assert old in text
        text = text.replace(old, new)
    return text


def _tiny_stage() -> StageSpec:
    return parse_stage(_tiny_stage_text(), "tiny-stage.toml")


def test_a_plugged_in_data_set_loads_through_the_same_path(tiny: Tiny, tmp_path: Path) -> None:
    spec = _tiny_stage()
    assert spec.dataset is tiny.dataset and spec.flat()["data.dataset"] == "tiny"
    assert data.ensure_data(str(tiny.folder), [spec.dataset], download=False) == tiny.folder
    splits = data.load_dataset(spec.dataset, tiny.folder, download=False)
    assert splits.sizes == tiny.dataset.split.sizes == {"train": 500, "val": 100, "test": 200}
    flat = tiny.images.reshape(800, 196).astype(np.float32) / np.float32(255)
    np.testing.assert_array_equal(splits.train_x, flat[:500])
    np.testing.assert_array_equal(splits.val_x, flat[500:600])  # the END of its training file
    np.testing.assert_array_equal(splits.test_x, flat[600:])
    assert splits.train_y.dtype == np.int64
    assert splits.val_y.tolist() == tiny.labels[500:600].tolist()
    assert splits.test_y.tolist() == tiny.labels[600:].tolist()
    # The same parsed-array cache, each entry with its digest, and a digest of its own.
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(cached) == 8 and all(name.startswith("tiny-") for name in cached)
    assert sum(name.endswith(".npy.sha256") for name in cached) == 4
    again = data.load_dataset(spec.dataset, tiny.folder, download=False)
    assert again.sha256 == splits.sha256 and len(splits.sha256) == 64


def test_a_plugged_in_data_set_has_the_same_checks(
    tiny: Tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its errors name it; its default folder is its own, beside MNIST's in one data dir."""
    victim = tiny.folder / "tiny-test-labels.gz"
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    with pytest.raises(BenchError, match=f"^Tiny file {victim} is"):
        data.ensure_files(tiny.dataset, tiny.folder, download=False)

    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    default = tmp_path / "home" / ".cache" / "mlp-bench"
    assert data.default_data_dir(tiny.dataset) == default / "tiny"
    assert data.dataset_dir(default, tiny.dataset) == default / "tiny"


@pytest.mark.parametrize(
    ("layer_sizes", "changes", "message"),
    [
        ("[784, 256, 256, 10]", {}, "model.layer_sizes [784, 256, 256, 10]: Tiny needs 196"),
        ("[196, 32, 5]", {}, "model.layer_sizes [196, 32, 5]: Tiny needs 196 inputs and 10"),
        (
            "[196, 32, 10]",
            {'validation = "last_100_train"': 'validation = "first_5000_train"'},
            "data.validation = 'first_5000_train', but Tiny holds out 'last_100_train'",
        ),
        (
            "[196, 32, 10]",
            {"batch_size = 100": "batch_size = 501"},
            "training.batch_size = 501 is outside [1, 500]",
        ),
    ],
    ids=["inputs", "outputs", "validation", "batch"],
)
def test_a_stage_that_does_not_fit_its_data_set_is_one_line(
    tiny: Tiny, layer_sizes: str, changes: dict[str, str], message: str
) -> None:
    text = _tiny_stage_text(layer_sizes)
    for old, new in changes.items():
        text = text.replace(old, new)
    with pytest.raises(BenchError) as info:
        parse_stage(text, "tiny-stage.toml")
    msg = str(info.value)
    assert msg.startswith("tiny-stage.toml: ") and message in msg and "\n" not in msg


def test_parity_steps_come_from_the_data_sets_split(tiny: Tiny) -> None:
    """5 batches of 100 per epoch on the tiny split: 12 steps take 3 epochs (MNIST: 1)."""
    assert parity_options("d", 1, 12, "float32", _tiny_stage()).epochs == 3
    mnist_stage = parse_stage((STAGES_DIR / "relu-xavier.toml").read_text(), "x.toml")
    assert parity_options("d", 1, 550, "float32", mnist_stage).epochs == 1


def test_a_stage_on_a_plugged_in_data_set_trains(tiny: Tiny) -> None:
    """The runner's own path, in this process (where the data set is registered)."""
    backends = installed_backends()
    if not backends:
        pytest.skip("no backend installed")
    backend = "torch" if "torch" in backends else backends[0]
    options = Options(data_dir=str(tiny.folder), threads=1)
    result = run_cell(Cell("tiny-stage", backend, "cpu", 0), options, spec=_tiny_stage())
    assert result.dataset == "tiny" and len(result.epochs) == 2
    assert [e.steps for e in result.epochs] == [5, 5]  # 500 training rows, batches of 100
    expected = data.load_dataset(tiny.dataset, tiny.folder, download=False).sha256
    assert result.environment["data_sha256"] == expected
    assert 0.0 <= result.test_accuracy <= 1.0
