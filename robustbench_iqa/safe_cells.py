"""Text cells made safe for the files a person opens: CSV in a spreadsheet, Markdown on a web page.

Names in results come from users' files (image names, model names of plugins), so a name
can be a payload.  A spreadsheet evaluates a CSV cell that starts with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return as a formula (``=HYPERLINK(...)``, ``=cmd|...``);
:func:`csv_cell` prefixes such a text cell with ``'`` (the OWASP "CSV injection" advice),
which spreadsheets show as the text itself.  Numbers are left alone (``-0.5`` stays a
number), and so is a text that reads as a number.  Markdown renders raw HTML and links;
:func:`markdown_cell` writes ``<``, ``>`` and ``&`` as HTML entities and escapes the
characters of Markdown's link, image and code syntax and the cell separator, so a name shows
as typed (and an image link cannot make the page fetch anything).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")
"""First characters that make a spreadsheet read a cell as a formula."""

_MARKDOWN_SPECIAL = "\\`[]|"
"""Escaped in Markdown cells: the escape itself, code spans, link and image brackets, the cell separator."""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_cell(v: Any) -> Any:
    """``v`` unchanged, unless it is a text a spreadsheet would evaluate: then ``"'" + v``."""
    if isinstance(v, str) and v.startswith(FORMULA_START) and not _is_number(v.strip()):
        return "'" + v
    return v


def csv_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` whose text cells and column names are neutralised by :func:`csv_cell`."""
    out = df.copy()
    for col in out.columns:
        if not pd.api.types.is_numeric_dtype(out[col]) and not pd.api.types.is_bool_dtype(out[col]):
            out[col] = pd.Series([csv_cell(v) for v in out[col]], index=out.index, dtype=object)
    out.columns = [csv_cell(str(c)) for c in out.columns]
    return out


def markdown_cell(text: str) -> str:
    """``text`` for a Markdown table cell: shown as typed, never rendered as HTML, a link or markup."""
    out = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    out = "".join("\\" + ch if ch in _MARKDOWN_SPECIAL else ch for ch in out)
    return " ".join(out.splitlines()) if out else out
