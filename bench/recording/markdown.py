"""User-supplied text (stage files, run names, command lines) inside the Markdown of MLflow
descriptions: MLflow renders a description's Markdown and keeps its `<img>` and `<iframe>`, so
such text is escaped to show as written, never as markup."""

from __future__ import annotations

import html
import re

# Inline markup a word can start: emphasis, code, links and images, table cells, strikethrough.
_INLINE = re.compile(r"([\\`*_\[\]|~!])")


def text(value: str) -> str:
    """Text as Markdown that shows it as written, on one line (it may be a table's cell)."""
    one_line = " ".join(value.split())
    return _INLINE.sub(r"\\\1", html.escape(one_line, quote=False))


def code(value: str) -> str:
    """A code span holding `value` as written: its delimiter is longer than any run of
    backticks in it, so none can close it early."""
    one_line = " ".join(value.split())
    fence = "`" * (max(map(len, re.findall("`+", one_line)), default=0) + 1)
    pad = " " if one_line.startswith("`") or one_line.endswith("`") else ""
    return f"{fence}{pad}{one_line}{pad}{fence}"


def fenced(value: str) -> str:
    """A fenced block holding `value` as written: its fence is longer than any inside it."""
    fence = "`" * max(3, max(map(len, re.findall("`+", value)), default=0) + 1)
    return f"{fence}\n{value.rstrip()}\n{fence}"


# What inline_html renders: a code span (any fence), strong emphasis, a link, an escaped mark.
_RENDERED = re.compile(
    r"(?P<fence>`+)(?P<code>.+?)(?P=fence)(?!`)"
    r"|\*\*(?P<strong>.+?)\*\*"
    r"|\[(?P<words>(?:\\.|[^\]\\])*)\]\((?P<url>[^)\s]*)\)"
    r"|\\(?P<escaped>.)"
)


def inline_html(value: str) -> str:
    """One line of the Markdown made here (text(), code(), emphasis, links) as HTML, for the
    report page, which shows what MLflow's renderer shows instead of the marks."""

    def render(match: re.Match[str]) -> str:
        if match["fence"]:
            code_text = match["code"]
            if code_text.startswith(" ") and code_text.endswith(" ") and code_text.strip():
                code_text = code_text[1:-1]  # the pad code() adds beside a backtick
            return f"<code>{html.escape(code_text)}</code>"
        if match["strong"] is not None:
            return f"<strong>{inline_html(match['strong'])}</strong>"
        if match["words"] is not None:
            return f'<a href="{html.escape(match["url"])}">{inline_html(match["words"])}</a>'
        return html.escape(match["escaped"])

    return _RENDERED.sub(render, value)
