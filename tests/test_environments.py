"""Environments made by the real `python -m venv` and pip, from this machine's package indexes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.core.errors import BenchError
from bench.execution.environments import (
    RECORD_NAME,
    Environment,
    _move_into_place,
    ensure,
    environment_key,
    frameworks_of,
    parse_pins,
)
from tests.conftest import JAX_PINS, ROOT
from tests.live import as_a_terminal_job, bench

# jax and jaxlib 0.10.2: wheels small enough (about 650 MB installed) to make in a test.


def test_pins_are_normalised_and_sorted() -> None:
    assert parse_pins("JAXLIB==0.10.2, Jax==0.10.2") == JAX_PINS
    # A comma before a version operator continues the pin before it.
    assert parse_pins("jax>=0.9,<0.11,jaxlib==0.10.2") == ("jax<0.11,>=0.9", "jaxlib==0.10.2")
    assert parse_pins("tensorflow_cpu==2.21.0") == ("tensorflow-cpu==2.21.0",)


def test_pins_are_read_from_a_requirements_file(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("# the upgrade\njaxlib==0.10.2  # with jax\n\njax==0.10.2\n")
    assert parse_pins(str(requirements)) == JAX_PINS


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("jax>>1", "pin 'jax>>1' is not a requirement"),
        ("", "no pins given"),
        ("jax==0.10.2,", "an empty pin"),
        ("jax==0.10.2,,jaxlib==0.10.2", "an empty pin"),
        ("jax==0.10.2,JAX==0.9.2", "jax pinned more than once"),
    ],
)
def test_a_bad_pin_is_one_line_and_makes_nothing(text: str, named: str, tmp_path: Path) -> None:
    with pytest.raises(BenchError) as raised:
        parse_pins(text)
    assert named in str(raised.value)
    assert "\n" not in str(raised.value)
    with pytest.raises(BenchError, match=named):
        ensure(tuple(text.split(",")), root=tmp_path)
    assert os.listdir(tmp_path) == []


def test_a_pip_option_in_a_requirements_file_is_refused(tmp_path: Path) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("jax==0.10.2\n--index-url https://example.org/simple\n")
    with pytest.raises(BenchError, match="is a pip option; list only pins"):
        parse_pins(str(requirements))


def test_frameworks_of_names_the_backends() -> None:
    assert frameworks_of(["tensorflow-cpu==2.21.0"]) == {"tensorflow"}
    assert frameworks_of(["TF_Nightly", "tensorflow==2.20.0"]) == {"tensorflow"}
    assert frameworks_of(["torch==2.13.0", "jaxlib==0.10.2"]) == {"torch", "jax"}
    assert frameworks_of(["numpy==2.1.0"]) == set()


def test_the_key_is_the_pins_whatever_their_order() -> None:
    assert environment_key(JAX_PINS) == environment_key(tuple(reversed(JAX_PINS)))
    assert environment_key(JAX_PINS) != environment_key(("jax==0.10.2",))


@pytest.fixture
def made(jax_environment: Environment) -> Environment:
    """The session's jax environment (conftest), made once beside a building folder left by a
    process that was killed."""
    return jax_environment


@pytest.mark.slow
def test_an_environment_runs_its_pins(made: Environment) -> None:
    done = subprocess.run(
        [str(made.python), "-c", "import jax, numpy; print(jax.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "0.10.2"
    # Its scripts name the folder it was renamed to, not the one it was made in.
    assert (
        subprocess.run([str(made.path / "bin" / "pip"), "--version"], check=False).returncode == 0
    )


@pytest.mark.slow
def test_an_environment_records_what_it_holds(made: Environment) -> None:
    record = json.loads((made.path / RECORD_NAME).read_text())
    assert record["pins"] == list(JAX_PINS)
    assert record["made_s"] > 0 and record["size_bytes"] > 0
    assert record["python"] == ".".join(str(part) for part in sys.version_info[:3])
    assert {"jax==0.10.2", "jaxlib==0.10.2"} <= set(record["freeze"])
    assert any(line.startswith("numpy==") for line in record["freeze"])
    assert made.made_s == record["made_s"] and made.size_bytes == record["size_bytes"]
    assert made.path.name == f"jax-0.10-{environment_key(JAX_PINS)}"
    # Only the finished folder is left: the building folders are gone, a killed one's too.
    assert os.listdir(made.path.parent) == [made.path.name]


@pytest.mark.slow
def test_the_same_pins_again_are_the_same_environment_at_once(made: Environment) -> None:
    started = time.monotonic()
    again = ensure(("JAXLIB==0.10.2", "jax==0.10.2"), root=made.path.parent)
    assert time.monotonic() - started < 1
    assert again.path == made.path
    assert again.tags() == {
        "env.name": "jax==0.10.2 jaxlib==0.10.2",
        "env.pins": "jax==0.10.2; jaxlib==0.10.2",
        "env.key": environment_key(JAX_PINS),
    }
    assert made.tags()["env.name"] == "jax 0.10"


@pytest.mark.slow
def test_envs_lists_the_environments(made: Environment) -> None:
    done = bench("envs", "--root", str(made.path.parent))
    assert done.returncode == 0, done.stderr
    row = done.stdout.splitlines()[1]
    assert row.startswith("jax 0.10 ")
    assert "jax==0.10.2 jaxlib==0.10.2" in row
    assert row.endswith(str(made.path))
    assert f"{made.size_bytes / 1e6:.0f}" in row.split()


def test_envs_on_an_empty_folder_says_so(tmp_path: Path) -> None:
    done = bench("envs", "--root", str(tmp_path))
    assert (done.returncode, done.stdout) == (0, f"no environments in {tmp_path}\n")


@pytest.mark.slow
def test_a_version_that_does_not_exist_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(BenchError) as raised:
        ensure(("jax==0.0.999",), root=tmp_path)
    assert str(raised.value) == (
        "jax==0.0.999 cannot be installed here: no release of jax matches; "
        "pick a released version (`pip index versions jax`)"
    )
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_a_pin_pip_refuses_gives_pips_reason_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A constraint of this machine's pip configuration that the pin cannot meet.
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("numpy<2\n")
    monkeypatch.setenv("PIP_CONSTRAINT", str(constraints))
    root = tmp_path / "envs"
    with pytest.raises(BenchError) as raised:
        ensure(("jax==0.10.2",), root=root)
    message = str(raised.value)
    assert message.startswith("jax==0.10.2 cannot be installed here: pip says: Cannot install")
    assert "jax 0.10.2 depends on numpy>=2" in message
    assert "\n" not in message
    assert os.listdir(root) == []


@pytest.mark.slow
def test_an_interrupted_build_leaves_nothing(tmp_path: Path) -> None:
    making = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from bench.execution.environments import "
            "ensure; ensure(('jax==0.10.2',), root=Path(sys.argv[1]))",
            str(tmp_path),
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=as_a_terminal_job,  # SIGINT reaches it when the suite runs in the background
    )
    deadline = time.monotonic() + 300
    # Interrupted once pip runs: the venv is made (its pip script is written last).
    while not list(tmp_path.glob(".building-*/bin/pip")):
        assert making.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    making.send_signal(signal.SIGINT)
    _, stderr = making.communicate(timeout=120)
    assert "KeyboardInterrupt" in stderr
    assert os.listdir(tmp_path) == []


def test_the_loser_of_two_makers_uses_the_winners_folder(tmp_path: Path) -> None:
    winner, loser = tmp_path / "jax-abc", tmp_path / ".building-abc-1"
    for folder in (winner, loser):
        folder.mkdir()
        (folder / RECORD_NAME).write_text(folder.name)
    _move_into_place(loser, winner)
    assert os.listdir(tmp_path) == ["jax-abc"]
    assert (winner / RECORD_NAME).read_text() == "jax-abc"
