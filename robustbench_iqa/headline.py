"""The gate's summary as people read it: headline columns first, evidence after, in a given width.

A summary row (one per model, defense and sigma; :func:`robustbench_iqa.runner.gate.evaluate`)
holds the identifying columns, the verdict and the studies' evidence.  The report and the
terminal show them in one order, :func:`order_columns`: model, defense, sigma, the radius
kind the verdict is about, the verdict, then the evidence it rests on (:data:`EVIDENCE`),
then the other columns in the order the studies give them (never alphabetical: the store
keeps the stored summary's keys sorted).

:func:`fit_table` lays a table out as plain text in at most ``width`` columns (default
100, a normal terminal): the columns that do not fit beside the headline continue in
further blocks, each repeating the identifying columns, so no line wraps and every value
is shown once next to the row it belongs to.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

KEYS = ("model", "defense", "sigma")
"""The columns that identify a summary row (repeated in every block of :func:`fit_table`)."""

RADIUS_KIND = ("radius_kind", "radius kind", "radius")
"""Names a summary may give the radius kind its verdict is about (the first present is shown)."""

VERDICT = ("gate", "verdict")
"""Names of the verdict column (PASS / FAIL)."""

EVIDENCE = ("images", "abstained", "violations", "inconclusive", "premise_failed", "median_eps_x",
            "median_eps_x_lipschitz", "mean_width")
"""The evidence the verdict rests on, shown right after it (when present), in this order: how many
images, how many abstained, what the audit found, the radii, the interval width."""

GAP = "  "


def order_columns(columns: Iterable[str]) -> list[str]:
    """``columns`` in headline order: :data:`KEYS`, the radius kind, the verdict, :data:`EVIDENCE`,
    then the rest in their given order.  Every column appears once; absent ones are skipped."""
    cols = list(dict.fromkeys(columns))
    head = [c for c in KEYS if c in cols]
    head += [c for c in RADIUS_KIND if c in cols][:1]
    head += [c for c in VERDICT if c in cols][:1]
    head += [c for c in EVIDENCE if c in cols]
    return head + [c for c in cols if c not in head]


def summary_columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """The columns of summary ``rows`` (first appearance order) in headline order."""
    return order_columns(k for r in rows for k in r)


def cell(value: Any) -> str:
    """A value as the terminal shows it: floats to 4 significant digits, ``-`` for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _block(cells: list[list[str]], header: list[str], idx: list[int]) -> list[str]:
    widths = [max([len(header[i])] + [len(r[i]) for r in cells]) for i in idx]
    lines = [GAP.join(header[i].ljust(w) for i, w in zip(idx, widths)).rstrip()]
    lines.append(GAP.join("-" * w for w in widths))
    lines += [GAP.join(r[i].ljust(w) for i, w in zip(idx, widths)).rstrip() for r in cells]
    return lines


def fit_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *,
              width: int = 100) -> str:
    """``rows`` as aligned plain-text blocks no wider than ``width`` characters.

    ``columns`` (default :func:`summary_columns`) are kept in order; the first block holds
    as many as fit, and each further block repeats the identifying columns (those of
    :data:`KEYS` present) before the next columns that fit.  A single column wider than
    the room left is given a block of its own (the only case a line can exceed ``width``).
    """
    if width < 20:
        raise ValueError(f"width must be >= 20, got {width}")
    cols = list(columns) if columns is not None else summary_columns(rows)
    cells = [[cell(r.get(c)) for c in cols] for r in rows]
    col_width = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(cols)]
    keys = [i for i, c in enumerate(cols) if c in KEYS]
    rest = [i for i in range(len(cols)) if i not in keys]
    blocks: list[list[int]] = []
    current = list(keys)
    used = sum(col_width[i] for i in current) + len(GAP) * max(0, len(current) - 1)
    for i in rest:
        extra = col_width[i] + (len(GAP) if current else 0)
        if used + extra > width and len(current) > len(keys):
            blocks.append(current)
            current = list(keys)
            used = sum(col_width[k] for k in current) + len(GAP) * max(0, len(current) - 1)
            extra = col_width[i] + (len(GAP) if current else 0)
        current.append(i)
        used += extra
    if len(current) > len(keys) or not blocks:
        blocks.append(current)
    out: list[str] = []
    for b in blocks:
        if out:
            out.append("")
        out += _block(cells, cols, b)
    return "\n".join(out)
