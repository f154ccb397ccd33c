"""Reports: tables (CSV, Markdown), figures (PNG, SVG) and one self-contained HTML page.

:func:`build_report` reads only from a run's results store.  It shows the gate's
verdict (stored by :func:`robustbench_iqa.runner.gate.evaluate`), then, for every
registered study (:data:`robustbench_iqa.studies.STUDIES`) with rows in the store,
its report section, writing

* ``<study>_<table>.csv`` and ``<study>_<table>.md`` for every table,
* ``<study>_<figure>.png`` and ``.svg`` for every figure,
* ``data/<table>.csv`` / ``.parquet``: the raw rows of every table,

and ``report.html``, which embeds every PNG as a base64 data URI and every
shown table as HTML, so the page needs no other file.  Studies without rows, or
whose rows lack columns, are skipped with a note in the page.
"""

from __future__ import annotations

import base64
import html
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from robustbench_iqa.analysis.figures import save_figure
from robustbench_iqa.errors import InputError
from robustbench_iqa.headline import order_columns
from robustbench_iqa.run_protocol import protocol_notes
from robustbench_iqa.safe_cells import csv_frame, markdown_cell
from robustbench_iqa.store import ResultsStore
from robustbench_iqa.studies.base import (
    ReportOptions,
    RunData,
    StudyOutput,
    get_study,
    list_studies,
)

HTML_FILE = "report.html"


@dataclass
class ReportResult:
    out_dir: Path
    html: Path
    files: list[Path] = field(default_factory=list)
    studies: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (floats to 4 significant digits)."""
    cols = [str(c) for c in df.columns]

    def cell(v: Any) -> str:
        return markdown_cell(_fmt(v))

    lines = ["| " + " | ".join(cell(c) for c in cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _html_table(df: pd.DataFrame) -> str:
    shown = df.map(_fmt) if not df.empty else df
    # A wide table scrolls inside its own box: the page keeps its width and the headline
    # columns (left) stay in view at 1280 px.
    return f'<div class="wide">{shown.to_html(index=False, border=0, classes="results", escape=True)}</div>'


def _write_tables(out: Path, study: str, tables: dict[str, pd.DataFrame]) -> list[Path]:
    paths = []
    for name, df in tables.items():
        csv, md = out / f"{study}_{name}.csv", out / f"{study}_{name}.md"
        csv_frame(df).to_csv(csv, index=False)
        md.write_text(to_markdown(df), encoding="utf-8")
        paths += [csv, md]
    return paths


def build_report(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    options: ReportOptions | None = None,
    progress: bool = True,
) -> ReportResult:
    """Write the report of ``run_dir`` into ``out_dir`` (default ``RUN_DIR/report``)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise InputError(f"run dir {run} does not exist")
    opt = options or ReportOptions()
    with ResultsStore.open(run) as store:
        present = set(store.tables())
        if not present:
            raise InputError(f"the results store in {run} has no rows yet")
        out = Path(out_dir) if out_dir is not None else run / "report"
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot write the report to {out}: {exc.strerror or exc}") from None
        result = ReportResult(out, out / HTML_FILE)
        result.files += store.export(out / "data")
        data = RunData(store)
        sections = []
        shown: set[str] = set()
        for name in tqdm(list_studies(), desc="report", unit="study", disable=not progress):
            study = get_study(name)
            if not any(t.table in present for t in study.tables):
                continue
            shown |= {t.table for t in study.tables}
            try:
                output = study.report(data, opt)
            except InputError as exc:
                result.notes.append(f"{name}: skipped ({exc})")
                continue
            if output is None:
                continue
            result.studies.append(name)
            sections.append(_section(out, name, study.title, study.summary_text, output, result))
        for name in sorted(present - shown):
            result.notes.append(f"table {name}: no study reports it; its rows are in data/{name}.csv")
        gate = store.get_meta("gate")
        head = [_protocol_section(store.config)] + ([_gate_section(gate)] if gate else [])
        page = _page(run, store.config, head, sections, result.notes)
    result.html.write_text(page, encoding="utf-8")
    result.files.append(result.html)
    return result


def _protocol_section(config: dict[str, Any]) -> str:
    """The run's protocol (:func:`robustbench_iqa.run_protocol.protocol_notes`): split, weights, orientation."""
    items = "".join(f"<li>{html.escape(n)}</li>" for n in protocol_notes(config))
    return f'<section id="protocol"><h2>Protocol</h2><ul>{items}</ul></section>' if items else ""


def _gate_section(gate: dict[str, Any]) -> str:
    """The stored verdict of the gate: PASS/FAIL, the summary table and every check."""
    verdict = "PASSED" if gate.get("passed") else "FAILED"
    parts = [f'<section id="gate"><h2>Gate: {verdict}</h2>']
    if gate.get("summary"):
        # The store keeps the summary's keys sorted: show the headline columns first (model,
        # defense, sigma, radius kind, verdict), then the evidence in the studies' order.
        summary = pd.DataFrame(gate["summary"])
        cols = order_columns([*gate.get("columns", []), *summary.columns])
        parts.append(_html_table(summary[cols]))
    checks = pd.DataFrame(gate.get("checks", []))
    if not checks.empty:
        checks = checks.assign(passed=checks["passed"].map({True: "ok", False: "FAIL"}))
        parts.append(f"<h3>checks</h3>{_html_table(checks[['passed', 'name', 'model', 'defense', 'sigma', 'detail']])}")
    parts.append("</section>")
    return "\n".join(parts)


def _section(out: Path, name: str, title: str, summary: str, output: StudyOutput, result: ReportResult) -> str:
    result.files += _write_tables(out, name, {**output.tables, **output.details})
    parts = [f'<section id="{name}"><h2>{html.escape(title)}</h2>',
             f"<p>{html.escape(summary)}</p>"]
    parts += [f'<p class="note">{html.escape(n)}</p>' for n in output.notes]
    for fig_name, fig in output.figures.items():
        paths = save_figure(fig, out / f"{name}_{fig_name}")
        result.files += paths
        png = next(p for p in paths if p.suffix == ".png")
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f'<figure><img alt="{html.escape(name)} {html.escape(fig_name)}" '
                     f'src="data:image/png;base64,{data}"><figcaption>{html.escape(fig_name)}'
                     "</figcaption></figure>")
    for table_name, df in output.tables.items():
        parts.append(f"<h3>{html.escape(table_name)}</h3>{_html_table(df)}")
    if output.details:
        listed = ", ".join(f"{name}_{t}.csv" for t in output.details)
        parts.append(f'<p class="note">per-image details: {html.escape(listed)}</p>')
    parts.append("</section>")
    return "\n".join(parts)


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
table.results{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
table.results th,table.results td{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left}
table.results th{background:#f3f3f3}
table.results th,table.results td:not(:last-child){white-space:nowrap}
.wide{overflow-x:auto;max-width:100%}
figure{margin:1em 0} figure img{max-width:100%}
.note{color:#555;font-style:italic} pre{background:#f6f6f6;padding:1em;overflow-x:auto}
"""


def _page(run: Path, config: dict[str, Any], head: list[str], sections: list[str], notes: list[str]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    notes_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    cfg = html.escape(json.dumps(config, indent=2, sort_keys=True, default=str))
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>robustbench_iqa report: {html.escape(run.name)}</title>",
            f"<style>{_CSS}</style></head><body>",
            f"<h1>robustbench_iqa report</h1><p>run <code>{html.escape(str(run))}</code>, "
            f"generated {when}</p>",
            f"<ul class=\"notes\">{notes_html}</ul>" if notes else "",
            *head,
            *sections,
            f"<section id=\"config\"><h2>Run configuration</h2><pre>{cfg}</pre></section>",
            "</body></html>",
        ]
    )
