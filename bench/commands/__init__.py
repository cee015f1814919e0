"""The command line: one thin module per command (python -m bench COMMAND)."""
