"""What a cell records of its options: what `reproduce` reads back."""

from __future__ import annotations

import pytest

from bench.execution.runner import RunOptions


@pytest.mark.parametrize(
    ("backend", "xla", "cuda_graphs"),
    [("tensorflow", "true", "n/a"), ("torch", "n/a", "true"), (None, "true", "true")],
)
def test_an_option_of_another_framework_is_recorded_not_applicable(
    backend: str | None, xla: str, cuda_graphs: str
) -> None:
    """A TensorFlow cell of an invocation with --cuda-graphs ran no CUDA graph."""
    options = RunOptions(data_dir="d", threads=2, cuda_graphs=True)
    record = options.record(backend)
    assert record["option.xla"] == xla and record["option.cuda_graphs"] == cuda_graphs


def test_recorded_options_read_back() -> None:
    options = RunOptions(data_dir="d", threads=3, epochs=4, cuda_graphs=True, tf32=True)
    for backend in ("tensorflow", "torch"):
        params = {**options.record(backend), "training.epochs": "4"}
        again = RunOptions.from_record(params, "d")
        assert again.threads == 3 and again.tf32 and again.epochs == 4
        assert again.cuda_graphs == (backend == "torch")
        assert again.xla == (backend == "tensorflow")
