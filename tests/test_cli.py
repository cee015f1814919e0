"""The command line as a user meets it: real processes, a real MLflow store."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backends import installed_backends
from bench.devices import gpu_names
from tests.conftest import ROOT, mnist_dir


def bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def test_list_names_stages_backends_devices() -> None:
    done = bench("list")
    assert done.returncode == 0
    for word in ("relu-normal", "relu-xavier", "adam", "dropout", "tensorflow", "torch", "cpu"):
        assert word in done.stdout


@pytest.fixture
def corrupt_data(tmp_path: Path) -> Path:
    folder = tmp_path / "corrupt"
    folder.mkdir()
    for source in mnist_dir().glob("*.gz"):
        shutil.copy(source, folder / source.name)
    target = folder / "t10k-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes()[:-10])
    return folder


BAD_INPUTS = [
    (["--stage", "relu-tanh"], "invalid choice: 'relu-tanh'"),
    (["--backend", "jax"], "unknown backend 'jax'"),
    (["--device", "tpu"], "invalid choice: 'tpu'"),
    (["--seed", "-1"], "-1 is negative"),
    (["--seed", "one"], "'one' is not an integer"),
    (["--epochs", "0"], "0 is not allowed"),
    (["--threads", "0"], "0 is not allowed"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (["--tracking-uri", "sqlite:////proc/no-such-dir/mlflow.db"], "tracking store"),
    (["--tracking-uri", "http://127.0.0.1:9"], "tracking store http://127.0.0.1:9 is not usable"),
]


@pytest.mark.parametrize(
    ("args", "message"), BAD_INPUTS, ids=[a[0][0] + a[0][-1] for a in BAD_INPUTS]
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    args: list[str], message: str, tmp_path: Path
) -> None:
    store = tmp_path / "mlflow.db"
    uri = ["--tracking-uri", f"sqlite:///{store}"] if "--tracking-uri" not in args else []
    done = bench("run", "--data-dir", str(mnist_dir()), *uri, *args)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: ") and message in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not store.exists()  # nothing half-written


def test_corrupt_data_file_is_named(corrupt_data: Path, tmp_path: Path) -> None:
    done = bench(
        "run", "--data-dir", str(corrupt_data), "--tracking-uri", f"sqlite:///{tmp_path}/m.db"
    )
    assert done.returncode == 2
    assert "t10k-labels-idx1-ubyte.gz" in done.stderr and done.stderr.count("\n") == 1


def test_empty_data_dir_without_network_names_the_files(tmp_path: Path) -> None:
    """No mirror is reachable from CI: the error says which file and how to get it."""
    done = bench(
        "run",
        "--data-dir",
        str(tmp_path / "empty"),
        "--tracking-uri",
        f"sqlite:///{tmp_path}/m.db",
        env={"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"},
    )
    assert done.returncode == 2
    assert "train-images-idx3-ubyte.gz" in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "m.db").exists()


@pytest.mark.skipif(bool(gpu_names()), reason="this machine has a GPU")
def test_gpu_without_gpu_is_an_error(tmp_path: Path) -> None:
    done = bench("run", "--device", "gpu", "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert done.returncode == 2 and "no NVIDIA GPU" in done.stderr


def _client(uri: str):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_run_records_parent_and_nested_cells(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = bench(
        "run",
        "--stage",
        "relu-xavier",
        "--epochs",
        "2",
        "--seed",
        "3",
        "--data-dir",
        str(mnist_dir()),
        "--tracking-uri",
        uri,
        "--experiment",
        "e2e",
    )
    assert done.returncode == 0, done.stderr
    backends = installed_backends()
    assert "98.02%" in done.stdout  # the tutorial's number beside ours
    client = _client(uri)
    experiment = client.get_experiment_by_name("e2e")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    groups = [r for r in runs if r.data.tags.get("kind") == "group"]
    cells = [r for r in runs if r.data.tags.get("kind") == "cell"]
    assert len(parents) == 1 and len(groups) == len(cells) == len(backends)
    assert len(runs) == 1 + 2 * len(backends)
    assert all(r.info.status == "FINISHED" for r in runs)
    group_ids = {g.info.run_id: g for g in groups}
    for group in groups:
        assert group.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert group.data.metrics["test_accuracy_n"] == 1
        assert group.data.metrics["outcome_converged"] == 1
    assert str(experiment.artifact_location).startswith((tmp_path / "artifacts").as_uri())
    for run in cells:
        tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
        group = group_ids[tags["mlflow.parentRunId"]]
        assert group.info.run_name == f"relu-xavier/{tags['backend']}/cpu"
        assert run.info.run_name == f"relu-xavier/{tags['backend']}/cpu/seed3"
        assert (tags["stage"], tags["device"], tags["seed"], tags["outcome"]) == (
            "relu-xavier",
            "cpu",
            "3",
            "converged",
        )
        assert params["optimizer.learning_rate"] == "0.1" and params["training.epochs"] == "2"
        assert params["framework"] == tags["backend"] and params["threads"]
        for key in ("framework_version", "python_version", "cpu_model", "intra_op_threads"):
            assert params[key]
        assert metrics["test_accuracy"] > 0.9 and metrics["train_samples_per_s"] > 0
        assert metrics["wall_seconds"] > 0
        for key in ("train_loss", "val_accuracy", "epoch_seconds"):
            history = client.get_metric_history(run.info.run_id, key)
            assert [m.step for m in history] == [1, 2]
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"relu-xavier.toml", "step_losses.csv", "worker.log"} <= artifacts


def test_interrupt_ends_runs_killed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench",
            "run",
            "--stage",
            "relu-xavier",
            "--backend",
            installed_backends()[-1],
            "--data-dir",
            str(mnist_dir()),
            "--tracking-uri",
            uri,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert "cells ->" in process.stdout.readline()  # the store is created and migrated
        client = _client(uri)
        experiments = [e.experiment_id for e in client.search_experiments()]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until the cell has logged an epoch
            time.sleep(0.5)
            if client.search_runs(experiments, filter_string="metrics.epoch_seconds > 0"):
                break
        process.send_signal(signal.SIGINT)
    except BaseException:
        process.kill()
        raise
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    runs = client.search_runs(experiments)
    assert sorted(r.info.status for r in runs) == ["KILLED"] * 3  # invocation, group, cell
