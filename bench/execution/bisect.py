"""`bench bisect`'s engine: the git history between two commits, and one probe invocation of a
commit, run by that commit's own harness and backends in a worktree of its own.

Each probe is a `bench run` in a fresh process whose working directory and PYTHONPATH are the
commit's worktree, so what is measured is the code of that commit, not of this checkout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.core.errors import BenchError

GIT_TIMEOUT_S = 60
HARNESS = "bench/__main__.py"  # what `python -m bench` runs in a probe's worktree
OUTPUT_TAIL_LINES = 5  # of a probe that recorded nothing: enough to see why
INTERRUPT_WAIT_S = 60  # for an interrupted probe to end its runs


@dataclass(frozen=True)
class Commit:
    sha: str
    subject: str

    @property
    def short(self) -> str:
        return self.sha[:7]

    def __str__(self) -> str:
        return f"{self.short} ({self.subject})"


@dataclass(frozen=True)
class History:
    """GOOD, BAD and the first-parent commits after GOOD up to BAD (BAD last): the candidates
    for the first bad commit."""

    repo: Path
    good: Commit
    bad: Commit
    candidates: list[Commit]


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"git {args[0]} in {repo} failed ({exc}); is git installed?") from None


def _git_out(repo: Path, *args: str) -> str:
    """git's output; a failure is a one-line error with git's own first line."""
    done = _git(repo, *args)
    if done.returncode != 0:
        said = (done.stderr.strip().splitlines() or ["no message"])[0]
        raise BenchError(f"`git {' '.join(args)}` in {repo} failed: {said}")
    return done.stdout.strip()


def repo_root(path: Path) -> Path:
    """The top folder of the git repository holding `path`."""
    if not path.is_dir():
        raise BenchError(f"--repo {path} is not a folder; give a git checkout's folder")
    done = _git(path, "rev-parse", "--show-toplevel")
    if done.returncode != 0:
        raise BenchError(f"{path.resolve()} is not in a git repository; give one with --repo PATH")
    return Path(done.stdout.strip())


def commit(repo: Path, name: str) -> Commit:
    """A commit named by the user (sha, branch, tag, HEAD~3), checked to exist."""
    done = _git(repo, "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}")
    if done.returncode != 0 or not done.stdout.strip():
        raise BenchError(
            f"{name!r} is not a commit in {repo}; give a sha, branch or tag (see `git log`)"
        )
    sha = done.stdout.strip()
    return Commit(sha, _git_out(repo, "log", "-1", "--format=%s", sha))


def history(path: Path, good_name: str, bad_name: str) -> History:
    """The range to bisect, after every check that needs no training."""
    repo = repo_root(path)
    good, bad = commit(repo, good_name), commit(repo, bad_name)
    if good.sha == bad.sha:
        raise BenchError(f"GOOD and BAD are the same commit {good.short}; give two commits")
    if _git(repo, "merge-base", "--is-ancestor", good.sha, bad.sha).returncode != 0:
        raise BenchError(
            f"GOOD {good.short} is not an ancestor of BAD {bad.short}; give an older GOOD"
            " (or swap the two)"
        )
    if _git_out(repo, "status", "--porcelain"):
        raise BenchError(
            f"the worktree of {repo} has uncommitted changes, which bisect would not probe;"
            " commit or stash them"
        )
    for side, at in (("GOOD", good), ("BAD", bad)):
        # Without its own, a probe would run whichever bench the interpreter finds installed.
        if _git(repo, "cat-file", "-e", f"{at.sha}:{HARNESS}").returncode != 0:
            raise BenchError(
                f"{side} {at} has no bench harness ({HARNESS}) to probe; give a {side} that has it"
            )
    shas = _git_out(repo, "rev-list", "--first-parent", "--reverse", f"{good.sha}..{bad.sha}")
    candidates = [
        Commit(sha, _git_out(repo, "log", "-1", "--format=%s", sha)) for sha in shas.split()
    ]
    if not candidates or candidates[-1] != bad:
        raise BenchError(
            f"BAD {bad.short} is not on the first-parent line from GOOD {good.short}; give a"
            " GOOD on the first-parent history of BAD"
        )
    return History(repo, good, bad, candidates)


@contextlib.contextmanager
def worktree(repo: Path, at: Commit, parent: Path) -> Iterator[Path]:
    """A detached worktree of the commit, removed (and pruned) afterwards, on failure and on
    interrupt too: a left-over worktree blocks the next `git worktree add` of that commit."""
    path = parent / at.sha[:12]
    _git_out(repo, "worktree", "add", "--detach", str(path), at.sha)
    try:
        yield path
    finally:
        _git(repo, "worktree", "remove", "--force", str(path))
        _git(repo, "worktree", "prune")


@dataclass(frozen=True)
class ProbeSettings:
    """What every probe invocation runs: the same cells for every commit."""

    stages: tuple[str, ...]
    backends: tuple[str, ...]
    stage_files: tuple[Path, ...]
    epochs: int | None
    tracking_uri: str
    data_dir: Path | None
    session: str  # the bisect=<session> tag on every probe's parent run
    env: str | None = None  # the pins every probe's cells run in (--env); None: this venv


def probe_command(settings: ProbeSettings, at: Commit, seeds: int) -> list[str]:
    """The probed commit's `bench run`, tagged so that its parent run can be found again."""
    command = [sys.executable, "-m", "bench", "run", "--seeds", str(seeds), "--no-peak"]
    command += [f"--stage={stage}" for stage in settings.stages]
    command += [f"--stage-file={path}" for path in settings.stage_files]
    command += [f"--backend={backend}" for backend in settings.backends]
    if settings.epochs is not None:
        command.append(f"--epochs={settings.epochs}")
    if settings.data_dir is not None:
        command.append(f"--data-dir={settings.data_dir}")
    if settings.env is not None:
        command.append(f"--env={settings.env}")
    command += ["--tag", f"bisect={settings.session}", "--tag", f"commit={at.sha}"]
    return [*command, "--tracking-uri", settings.tracking_uri]


@dataclass(frozen=True)
class ProbeRun:
    returncode: int
    output_tail: str  # the last lines of what it printed, for a probe that recorded nothing


def run_probe(settings: ProbeSettings, repo: Path, at: Commit, seeds: int, tmp: Path) -> ProbeRun:
    """Run one probe invocation of `at` in its own worktree and process; its output is kept
    back (the bisect prints one line per probe), all but its tail."""
    with worktree(repo, at, tmp) as path:
        if not (path / HARNESS).is_file():  # removed between GOOD and BAD
            raise BenchError(f"commit {at} has no bench harness ({HARNESS}) to probe")
        process = subprocess.Popen(
            probe_command(settings, at, seeds),
            cwd=path,
            env={**os.environ, "PYTHONPATH": str(path)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            output, _ = process.communicate()
        except KeyboardInterrupt:
            _interrupt(process)
            raise
    tail = "\n".join(output.strip().splitlines()[-OUTPUT_TAIL_LINES:])
    return ProbeRun(process.returncode, tail)


def _interrupt(process: subprocess.Popen[str]) -> None:
    """Let an interrupted probe end its runs KILLED, as an interrupted `bench run` does (a
    Ctrl-C reached it too; a SIGTERM to the bisect alone did not), before its worktree goes."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGINT)
    try:
        process.communicate(timeout=INTERRUPT_WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
