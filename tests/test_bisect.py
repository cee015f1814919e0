"""`bench bisect` on real git histories: a copy of this checkout with a planted accuracy change,
probed by real `bench run` processes in real worktrees, judged by the compare gate."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.commands.bisect import ASPECTS, read_verdict, seeds_can_help
from bench.commands.cli import main
from bench.recording import verdict as compare
from bench.recording.tracking import Tracker
from tests.conftest import ROOT
from tests.test_compare import _cell, _side

# Git with a fixed identity and none of the user's configuration (hooks, signing).
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.org",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.org",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}
COMMITS = 16  # after commit 0
PLANTED = 11  # the commit that changes the torch backend's numbers
TORCH_BACKEND = Path("backends/torch/backend.py")
LR_LINE = "lr = float(step_sizes[i])"
PLANTED_SUBJECT = "torch: a slightly larger learning rate"
BISECT_TIMEOUT_S = 1200


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **GIT_ENV},
    )
    return done.stdout.strip()


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def notes_commit(repo: Path, number: int, subject: str = "") -> str:
    """A commit that changes a line in a notes file (and whatever else is changed)."""
    with (repo / "NOTES").open("a") as notes:
        notes.write(f"note {number}\n")
    return commit_all(repo, subject or f"note {number}")


def new_repo(path: Path) -> Path:
    path.mkdir()
    git(path, "init", "-q", "-b", "main")
    return path


def checkout_copy(path: Path) -> Path:
    """A repository whose first commit is this checkout's tracked files as they are now."""
    repo = new_repo(path)
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a file deleted in the checkout but not yet from the index
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    commit_all(repo, "the harness")
    return repo


def quick_stage(folder: Path) -> Path:
    """relu-xavier with one small hidden layer and batches of 1000 (55 steps an epoch): what
    bisect needs is bit-identical step losses, and these train in a second."""
    text = (ROOT / "bench/core/stages/relu-xavier.toml").read_text()
    text = text.split("[expected]")[0] + '[expected]\nexpect = "no_reference"\n'
    for old, new in (
        ('name = "relu-xavier"', 'name = "bisect-quick"'),
        ("order = 2\n", "order = 90\n"),
        ("layer_sizes = [784, 256, 256, 10]", "layer_sizes = [784, 16, 10]"),
        ("batch_size = 100", "batch_size = 1000"),
    ):
        assert old in text, f"relu-xavier.toml no longer has {old}"
        text = text.replace(old, new)
    path = folder / "bisect-quick.toml"
    path.write_text(text)
    return path


def bisect(repo: Path, uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "bisect",
            *args,
            "--repo",
            str(repo),
            "--tracking-uri",
            uri,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BISECT_TIMEOUT_S,
    )


def worktrees(repo: Path) -> list[str]:
    return [line for line in git(repo, "worktree", "list").splitlines() if line]


@pytest.mark.slow
def test_bisect_finds_the_commit_that_changed_the_step_losses(
    tmp_path: Path, data_dir: Path
) -> None:
    repo = checkout_copy(tmp_path / "repo")
    good = git(repo, "rev-parse", "HEAD")
    shas = []
    for number in range(1, COMMITS + 1):
        subject = ""
        if number == PLANTED:
            backend = repo / TORCH_BACKEND
            text = backend.read_text()
            assert text.count(LR_LINE) == 1, "the SGD step's learning rate line moved"
            backend.write_text(text.replace(LR_LINE, f"{LR_LINE} * 1.001"))
            subject = PLANTED_SUBJECT
        shas.append(notes_commit(repo, number, subject))
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    start = time.perf_counter()
    done = bisect(
        repo,
        uri,
        good,
        shas[-1],
        f"--stage-file={quick_stage(tmp_path)}",
        "--backend=torch",
        "--epochs=1",
        "--seeds=1",
        f"--data-dir={data_dir}",
    )
    seconds = time.perf_counter() - start
    print(done.stdout, f"\n{seconds:.0f} s")
    assert done.returncode == 1, done.stdout + done.stderr
    planted = shas[PLANTED - 1]
    assert f"first bad commit: {planted} {PLANTED_SUBJECT}" in done.stdout
    probes = re.findall(r"^probe \d+: (\w+) .* -> (\w+): (.*)$", done.stdout, re.MULTILINE)
    assert probes[0][1] == "regression" and "step losses differ from step" in probes[0][2]
    assert 1 < len(probes) <= math.ceil(math.log2(COMMITS)) + 1
    assert len(re.findall("^GOOD ", done.stdout, re.MULTILINE)) == 1  # once, at one seed
    assert worktrees(repo) == worktrees(repo)[:1] and len(worktrees(repo)) == 1
    # Each probe ran its own commit's harness: the commit its parent run records is the probed.
    reader = Tracker(uri, None).reader
    parents = reader.search(list(reader.experiments()), "tags.kind = 'matrix'")
    assert len(parents) == len(probes) + 1
    for parent in parents:
        assert parent.tags["git_commit"] == parent.tags["commit"]
        assert parent.tags["git_dirty"] == "false"


@pytest.fixture
def small_repo(tmp_path: Path) -> tuple[Path, list[str]]:
    """A repository of three commits, for the inputs refused before anything is probed."""
    repo = new_repo(tmp_path / "small")
    return repo, [notes_commit(repo, number) for number in range(3)]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("no commit", "'nope' is not a commit in"),
        ("not an ancestor", "is not an ancestor of BAD"),
        ("same commit", "GOOD and BAD are the same commit"),
        ("dirty tree", "has uncommitted changes, which bisect would not probe"),
        ("not a repository", "is not in a git repository; give one with --repo PATH"),
        ("seeds above the cap", "--seeds 16 is above --max-seeds 8; raise it"),
        ("a pin that is no pin", "pin 'jax>>1' is not a requirement"),
        (
            "no harness",
            "has no bench harness (bench/__main__.py) to probe; give a GOOD that has it",
        ),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing(
    case: str,
    expected: str,
    small_repo: tuple[Path, list[str]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    repo, shas = small_repo
    good, bad = shas[0], shas[-1]
    if case == "no commit":
        good = "nope"
    elif case == "not an ancestor":
        good, bad = bad, good
    elif case == "same commit":
        good = bad
    elif case == "dirty tree":
        (repo / "NOTES").write_text("changed\n")
    elif case == "not a repository":
        repo = tmp_path / "plain"
        repo.mkdir()
    database = tmp_path / "store" / "mlflow.db"
    argv = ["bisect", good, bad, "--repo", str(repo), "--tracking-uri", f"sqlite:///{database}"]
    if case == "seeds above the cap":
        argv.append("--seeds=16")
    elif case == "a pin that is no pin":
        argv.append("--env=jax>>1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert not database.parent.exists()  # no store made, nothing recorded
    assert len(worktrees(small_repo[0])) == 1


def _one_epoch(losses: list[float], outcome: str = "converged") -> compare.Comparison:
    """GOOD's cell against one with these losses, one epoch each: no throughput sample."""
    base = _side("good", _cell(rates=[]))
    cand = _side("probe", _cell(rates=[], losses=losses, outcome=outcome))
    return compare.compare(base, cand, compare.Settings())


def test_a_probe_is_judged_on_what_regressed_at_bad() -> None:
    """Hunting an accuracy regression, bit-identical losses make a commit good even though one
    epoch leaves its speed inconclusive; hunting speed too, that stays inconclusive."""
    same = _one_epoch([2.3, 1.0, 0.5])
    assert same.exit_code == compare.EXIT_INCONCLUSIVE
    assert read_verdict(same, ("accuracy",)) == (
        False,
        "no accuracy regression: step losses bit-identical (1 seed(s))",
    )
    assert read_verdict(same, ASPECTS) == (
        None,
        "relu-xavier/torch/cpu/seed0: no throughput samples",
    )
    # Not rerun with more seeds: one epoch a cell has no throughput sample whatever the seeds.
    assert not seeds_can_help(same)
    base, cand = _side("good", _cell(rates=[100.0])), _side("probe", _cell(rates=[99.0]))
    assert seeds_can_help(compare.compare(base, cand, compare.Settings()))
    changed = read_verdict(_one_epoch([2.3, 1.5, 0.5]), ("accuracy",))
    assert changed == (True, "relu-xavier/torch/cpu/seed0: step losses differ from step 2")
    # A probe whose cell did not finish has no accuracy to judge: never guessed good.
    assert read_verdict(_one_epoch([2.3], outcome="killed"), ("accuracy",))[0] is None
