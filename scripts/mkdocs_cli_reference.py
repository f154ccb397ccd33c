"""A MkDocs hook for the documentation site: the command-line reference, generated from the parsers.

``docs/cli.md`` holds the marker ``<!-- cli-reference -->``; :func:`on_page_markdown` replaces it
with the ``--help`` text of every subcommand (and of nested ones, e.g. ``weights check``), taken
from :func:`robustbench_iqa.cli.build_parser` at build time, so every command and option in the
site is the one the installed code accepts.  The parsers import no torch, so the site builds
without the package's heavy dependencies.  Configured in mkdocs.yml (``hooks``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

MARKER = "<!-- cli-reference -->"
REPO = Path(__file__).resolve().parents[1]
WIDTH = "100"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def help_texts() -> list[tuple[str, str]]:
    """``(command, help text)`` for every subcommand, nested ones after their parent."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from robustbench_iqa.cli import _commands, build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH  # argparse wraps at the terminal's width: make it the page's
    try:
        out = []
        for name in sorted(_commands(), key=lambda n: (n not in ("verify", "certify", "attack"), n)):
            sub = _subparsers(build_parser(name))[name]
            out.append((name, sub.format_help()))
            for nested, parser in _subparsers(sub).items():
                out.append((f"{name} {nested}", parser.format_help()))
        return out
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


def reference() -> str:
    parts = []
    for command, text in help_texts():
        parts.append(f"### `robustbench-iqa {command}`\n\n```text\n{text.rstrip()}\n```\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return markdown.replace(MARKER, reference()) if MARKER in markdown else markdown
