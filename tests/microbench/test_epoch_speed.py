"""Micro-benchmarks: one training epoch per backend and stage (`nox -s microbench`).

pytest-benchmark saves them as JSON under results/benchmarks/, comparable across commits with
`pytest-benchmark compare` or `--benchmark-compare`. Excluded from `nox -s tests`: they measure,
they do not check. Each round is one whole epoch (550 steps) after a warm-up epoch.
"""

from __future__ import annotations

from typing import Any

import pytest

from backends import load_backend
from backends.base import Backend
from bench.core.data import Splits
from bench.core.options import Options
from bench.core.seeding import seeded_run
from bench.core.spec import STAGE_NAMES, load_stage
from tests.conftest import backend_params

pytestmark = pytest.mark.microbench
TRAINING_STAGES = [s for s in STAGE_NAMES if s != "relu-normal"]  # relu-normal goes NaN


@pytest.mark.parametrize("backend_name", backend_params())
@pytest.mark.parametrize("stage", TRAINING_STAGES)
def test_one_epoch(benchmark: Any, stage: str, backend_name: str, mnist: Splits) -> None:
    spec = load_stage(stage)
    run = seeded_run(spec, 0, mnist.train_x.shape[0])
    backend: Backend = load_backend(backend_name)("cpu", Options(data_dir="", threads=2))
    backend.load_data(mnist)
    backend.build(spec, run)
    backend.train_epoch(run.epoch_orders[0])  # warm-up: tracing, kernel selection
    benchmark.extra_info.update({"stage": stage, "backend": backend_name, "samples": 55_000})
    benchmark.pedantic(lambda: backend.train_epoch(run.epoch_orders[1]), rounds=3, iterations=1)
