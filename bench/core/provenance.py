"""Where a result came from: the project's git commit and whether the tree was dirty."""

from __future__ import annotations

import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state() -> dict[str, str]:
    """The commit and dirtiness of the checkout this code runs from ('unknown' outside git)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    # Untracked files count too: an uncommitted new module changes what runs.
    status = _git("status", "--porcelain", "--", "bench", "backends", "pyproject.toml")
    return {"git_commit": commit, "git_dirty": str(bool(status)).lower()}
