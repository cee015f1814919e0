"""The name a user types to run the harness: the console script that pyproject.toml's
[project.scripts] installs. Messages that tell a user what to run next name it, so that what
they copy works in any venv that installed the project (`python -m bench` works the same)."""

PROGRAM = "mlp-bench"
