"""`upgrade --from PINS --to PINS` and `run --env PINS`: cells in environments of their own,
interleaved, judged by the compare gate. Real venvs (jax from the package index), real
training, a real store."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench.execution.environments import ENV_DIR_ENV, Environment
from tests import live
from tests.conftest import JAX_PINS, mnist_dir

JAX = ",".join(JAX_PINS)
ONE_EPOCH = ("--stage", "relu-xavier", "--epochs", "1", "--no-peak")


def bench(env_root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m bench ARGS` with `env_root` as the environments' folder."""
    return live.bench(*args, env={ENV_DIR_ENV: str(env_root)})


def _client(uri: str):  # type: ignore[no-untyped-def]
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="module")
def aa(
    jax_environment: Environment, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, subprocess.CompletedProcess[str]]:
    """An A/A upgrade: the same pins on both sides, 2 seeds, into its own store. Six epochs give
    each cell the 5 steady epochs a side that its speed test needs at alpha 0.01; the slowdown
    allowed is wide, as the shared machine's other work moves one process's speed."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('store')}/mlflow.db"
    done = bench(
        jax_environment.path.parent,
        "upgrade",
        "--from",
        JAX,
        "--to",
        JAX,
        "--stage",
        "relu-xavier",
        "--no-peak",
        "--epochs",
        "6",
        "--seeds",
        "2",
        "--allow-busy",
        "--max-slowdown",
        "0.5",
        "--data-dir",
        str(mnist_dir()),
        "--tracking-uri",
        uri,
    )
    return uri, done


@pytest.mark.slow
def test_the_same_pins_on_both_sides_say_no_change(
    aa: tuple[str, subprocess.CompletedProcess[str]],
) -> None:
    uri, done = aa
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "bit-identical" in done.stdout
    assert "upgrade: jax==0.10.2 jaxlib==0.10.2 -> jax==0.10.2 jaxlib==0.10.2" in done.stdout
    comparison = _client(uri).search_runs(["1"], "tags.kind = 'comparison'")
    assert len(comparison) == 1
    tags = comparison[0].data.tags
    assert tags["verdict"] == "no regression"
    assert tags["upgrade_from_pins"] == "jax==0.10.2; jaxlib==0.10.2"


@pytest.mark.slow
def test_the_cells_are_interleaved_and_name_their_environment(
    aa: tuple[str, subprocess.CompletedProcess[str]],
) -> None:
    uri, _ = aa
    client = _client(uri)
    cells = client.search_runs(["1"], "tags.kind = 'cell'", order_by=["attributes.start_time ASC"])
    parents = {
        run.info.run_id: run.data.tags["upgrade_side"]
        for run in client.search_runs(["1"], "tags.kind = 'matrix'")
    }
    assert sorted(parents.values()) == ["from", "to"]
    order = [(parents[c.data.tags["invocation"]], c.data.tags["seed"]) for c in cells]
    # Seed 0 on the baseline first, then both sides' seed 1 with the candidate first: ABBA.
    assert order == [("from", "0"), ("to", "0"), ("to", "1"), ("from", "1")]
    for cell in cells:
        assert cell.data.tags["env.pins"] == "jax==0.10.2; jaxlib==0.10.2"
        assert cell.data.params["env.framework_version"] == "0.10.2"


@pytest.mark.slow
def test_run_in_an_environment_records_its_framework(
    jax_environment: Environment, tmp_path: Path
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = bench(
        jax_environment.path.parent,
        "run",
        "--env",
        JAX,
        *ONE_EPOCH,
        "--data-dir",
        str(mnist_dir()),
        "--tracking-uri",
        uri,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [cell] = _client(uri).search_runs(["1"], "tags.kind = 'cell'")
    assert cell.data.tags["backend"] == "jax"  # the environment's only framework
    assert cell.data.tags["env.name"] == "jax==0.10.2 jaxlib==0.10.2"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--from", "torch==2.13.0", "--to", JAX), "an upgrade compares versions of the same"),
        (("--from", "numpy==2.2.0", "--to", "numpy==2.2.0"), "pins install no framework"),
        (("--from", "jax>>1", "--to", JAX), "jax>>1"),
    ],
)
def test_bad_pins_are_one_line_and_make_nothing(
    args: tuple[str, ...], says: str, tmp_path: Path
) -> None:
    root = tmp_path / "envs"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = bench(root, "upgrade", *args, *ONE_EPOCH, "--tracking-uri", uri)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "mlflow.db").exists()
    assert not root.exists() or not any(root.iterdir())


@pytest.mark.parametrize("command", ["run", "upgrade"])
def test_a_backend_the_pins_lack_is_one_line_before_anything_is_made(
    command: str, tmp_path: Path
) -> None:
    root = tmp_path / "envs"
    sides = ["--env", JAX] if command == "run" else ["--from", JAX, "--to", JAX]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    done = bench(root, command, *sides, "--backend", "torch", *ONE_EPOCH, "--tracking-uri", uri)
    assert done.returncode == 2
    assert "backend 'torch' is not in environment" in done.stderr
    assert done.stderr.count("\n") == 1
    assert not (tmp_path / "mlflow.db").exists() and not root.exists()
