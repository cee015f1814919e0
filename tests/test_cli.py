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
    (["--cuda-graphs", "--device", "cpu"], "--cuda-graphs replays PyTorch's fast step on a GPU"),
    (["--cuda-graphs", "--dtype", "float64"], "--cuda-graphs trains in float32 only"),
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


@pytest.fixture(scope="module")
def recorded(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[str, subprocess.CompletedProcess[str]]:
    """One real 2-epoch invocation, recorded to its own store, shared by the tests below."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
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
    return uri, done


def test_run_records_parent_and_nested_cells(
    recorded: tuple[str, subprocess.CompletedProcess[str]],
) -> None:
    uri, done = recorded
    backends = installed_backends()
    assert "98.02%" in done.stdout  # the tutorial's number beside ours
    assert "peak float32 matmul" in done.stdout
    client = _client(uri)
    experiment = client.get_experiment_by_name("e2e")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    groups = [r for r in runs if r.data.tags.get("kind") == "group"]
    cells = [r for r in runs if r.data.tags.get("kind") == "cell"]
    assert len(parents) == 1 and len(groups) == len(cells) == len(backends)
    assert len(runs) == 1 + 2 * len(backends)
    assert all(r.info.status == "FINISHED" for r in runs)
    assert parents[0].data.tags["git_commit"]
    assert str(experiment.artifact_location).endswith("/artifacts")
    group_ids = {g.info.run_id: g for g in groups}
    for group in groups:
        assert group.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert group.data.metrics["test_accuracy_n"] == 1
        assert group.data.metrics["outcome_converged"] == 1
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
        assert params["option.deterministic"] == "true" and params["deterministic_ops"] == "true"
        for key in (
            "framework_version",
            "python_version",
            "cpu_model",
            "intra_op_threads",
            "numpy_blas",
            "git_commit",
            "git_dirty",
            "tf32",
            "dtype",
        ):
            assert params[key]
        assert metrics["test_accuracy"] > 0.9 and metrics["train_samples_per_s"] > 0
        assert metrics["wall_seconds"] > 0 and metrics["peak_rss_mb"] > 100
        assert 0 < metrics["roofline_fraction"] < 1.5 and metrics["peak_gflops"] > 0
        assert 0 < metrics["harness_fraction"] < 1
        assert metrics["flops_per_sample"] == 1_612_800
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


def _cell_id(uri: str, backend: str) -> str:
    client = _client(uri)
    experiment = client.get_experiment_by_name("e2e")
    [run] = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.kind = 'cell' and tags.backend = '{backend}'",
    )
    return str(run.info.run_id)


def test_reproduce_reports_bit_identical(
    recorded: tuple[str, subprocess.CompletedProcess[str]],
) -> None:
    uri, _ = recorded
    run_id = _cell_id(uri, installed_backends()[-1])
    done = bench("reproduce", run_id, "--tracking-uri", uri, "--data-dir", str(mnist_dir()))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bit-identical: yes" in done.stdout
    client = _client(uri)
    [copy] = client.search_runs(
        [client.get_experiment_by_name("e2e").experiment_id],
        filter_string=f"tags.reproduces = '{run_id}'",
    )
    assert copy.data.tags["bit_identical"] == "true"


def test_reproduce_names_what_differs(
    recorded: tuple[str, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    """A record whose losses were altered: the rerun is not bit-identical, and says where."""
    uri, _ = recorded
    run_id = _cell_id(uri, installed_backends()[0])
    client = _client(uri)
    losses = Path(client.download_artifacts(run_id, "step_losses.csv", str(tmp_path)))
    lines = losses.read_text().splitlines()
    step, loss = lines[7].split(",")
    lines[7] = f"{step},{float(loss) * 1.5!r}"
    losses.write_text("\n".join(lines) + "\n")
    client.log_artifact(run_id, str(losses))  # replaces the recorded file
    done = bench("reproduce", run_id, "--tracking-uri", uri, "--data-dir", str(mnist_dir()))
    assert done.returncode == 1
    assert "bit-identical: NO" in done.stdout and "first at step 7" in done.stdout


def test_reproduce_unknown_run_is_one_line(
    recorded: tuple[str, subprocess.CompletedProcess[str]],
) -> None:
    done = bench("reproduce", "0123456789abcdef", "--tracking-uri", recorded[0])
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "no run '0123456789abcdef'" in done.stderr


@pytest.mark.skipif(len(installed_backends()) < 2, reason="parity needs both backends")
def test_parity_command_prints_windows_and_records_the_curve(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = bench(
        "parity",
        "--stage",
        "relu-xavier",
        "--steps",
        "60",
        "--tracking-uri",
        uri,
        "--data-dir",
        str(mnist_dir()),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for window in ("N =     1", "N =    10", "N =    50", "N =    60", "PASS"):
        assert window in done.stdout
    client = _client(uri)
    [run] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.tags["kind"] == "parity" and run.data.tags["passed"] == "true"
    assert run.data.metrics["max_rel_loss_diff_first_50"] <= 1e-5
    assert {"parity_curve.csv", "parity_curve.png"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)
    }


def test_perf_command_prints_the_table(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = bench(
        "perf",
        "--stage",
        "relu-xavier",
        "--epochs",
        "2",
        "--keras-epochs",
        "2",
        "--tracking-uri",
        uri,
        "--data-dir",
        str(mnist_dir()),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for column in ("GFLOP/s", "roofline", "x Keras fit", "harness share"):
        assert column in done.stdout
    client = _client(uri)
    parents = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], filter_string="tags.kind = 'perf'"
    )
    assert parents[0].data.metrics["keras_fit_samples_per_s"] > 0
    [drift] = [line for line in done.stdout.splitlines() if line.startswith("peak drift")]
    assert "torch/cpu" in drift
    assert parents[0].data.metrics["peak_gflops_end_torch_cpu"] > 0
    assert "peak_drift_torch_cpu" in parents[0].data.metrics
    assert parents[0].data.tags["speed_stable"] in ("true", "false")
