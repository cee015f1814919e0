"""MkDocs hook: the command reference in commands.md, generated from the argparse parsers.

The marker line `<!-- cli-reference -->` in commands.md becomes, for `mlp-bench` and for each of
its subcommands, a `## mlp-bench NAME` heading, the subcommand's one-line summary and its
`--help` text, so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

MARKER = "<!-- cli-reference -->"
PROGRAM = "mlp-bench"
COLUMNS = "100"  # the help text's width, whatever the terminal that builds the docs

# The repository root, so that `bench` imports from this checkout even when it is not installed.
_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


def _subcommands(
    parser: argparse.ArgumentParser,
) -> tuple[dict[str, argparse.ArgumentParser], dict[str, str]]:
    """The subcommands' parsers by name, in the order they were added, and their summaries."""
    for action in parser._actions:  # argparse offers no public way to reach the subparsers
        if isinstance(action, argparse._SubParsersAction):
            summaries = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return dict(action.choices), summaries
    return {}, {}


def _section(title: str, summary: str, help_text: str) -> list[str]:
    lines = [f"## {title}", ""]
    if summary:
        lines += [summary[0].upper() + summary[1:] + ".", ""]
    return [*lines, "```text", help_text.rstrip(), "```", ""]


def cli_reference() -> str:
    """The generated Markdown: the top parser's help, then each subcommand's."""
    os.environ["COLUMNS"] = COLUMNS  # argparse sizes its help to the terminal it finds
    from bench.commands.cli import build_parser

    parser = build_parser()
    parser.prog = PROGRAM
    subcommands, summaries = _subcommands(parser)
    lines = _section(PROGRAM, "", parser.format_help())
    for name, sub in subcommands.items():
        sub.prog = f"{PROGRAM} {name}"
        lines += _section(f"{PROGRAM} {name}", summaries.get(name, ""), sub.format_help())
    return "\n".join(lines)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, cli_reference())
