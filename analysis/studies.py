"""The study registry: for each study name in the results store, how to report it.

A study's rows live in the store under ``study=<name>`` (see
:mod:`robustbench_iqa.store`); its builder turns the store's DataFrame of those
rows into tables and figures.  The row payload each study needs (beyond the
key columns ``study, model, defense, sigma, image, extra``), as documented in
the matching analysis module:

- ``correlation`` (:mod:`robustbench_iqa.analysis.correlation`): ``score, target`` and optionally
  ``seed, seconds_predict, seconds_certify``;
- ``audit`` (:mod:`robustbench_iqa.analysis.audit`): ``lower, upper, abstained, median_ci_low,
  median_ci_high`` and optionally ``attacked_median, feature_change,
  feature_radius, alpha`` (else the run config's ``alpha``);
- ``stability`` (:mod:`robustbench_iqa.analysis.stability`): ``n, score`` and optionally ``seed``;
- ``beyond`` (:mod:`robustbench_iqa.analysis.beyond`): ``norm, clean, adv`` (``defense="none"``
  for the undefended model);
- ``guarantee`` (:mod:`robustbench_iqa.analysis.guarantee`): ``eps_x, lower, upper`` and
  optionally ``abstained``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from robustbench_iqa.analysis import audit, beyond, correlation, figures, guarantee, stability


@dataclass(frozen=True)
class ReportOptions:
    """Settings of the statistics shown in a report."""

    confidence: float = 0.95
    """Level of the Clopper-Pearson intervals and of the beyond-certificate bands."""
    bins: int = 10
    """Quantile bins of eps_x in the guarantee-shape study."""
    interval: str = "t"
    """Beyond-certificate band: ``"t"`` or ``"bootstrap"``."""
    seed: int = 0
    """Seed of the bootstrap."""


@dataclass
class StudyOutput:
    """Tables and figures of one study.  ``tables`` are shown in the HTML page;
    ``details`` (per-image tables) are written as CSV/Markdown only."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    details: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


Builder = Callable[[pd.DataFrame, Mapping[str, Any], ReportOptions], StudyOutput]


@dataclass(frozen=True)
class Study:
    name: str
    title: str
    summary: str
    build: Builder


def _correlation(rows: pd.DataFrame, config: Mapping[str, Any], opt: ReportOptions) -> StudyOutput:
    groups = correlation.per_group(rows)
    summary = correlation.summarize(groups)
    out = StudyOutput(
        tables={"table": correlation.correlation_table(rows), "summary": summary},
        details={"groups": groups},
        figures={"correlation": figures.correlation_figure(summary)},
    )
    failed = int((~groups["logistic_ok"].astype(bool)).sum())
    if failed:
        out.notes.append(f"the logistic fit failed in {failed} group(s); raw PLCC used there")
    return out


def _audit(rows: pd.DataFrame, config: Mapping[str, Any], opt: ReportOptions) -> StudyOutput:
    alpha = None if "alpha" in rows else config.get("alpha")
    table = audit.audit_table(rows, alpha=alpha, confidence=opt.confidence)
    keys = [k for k in ("model", "defense", "sigma") if k in table]
    viol = table[table["kind"] == "violation"]
    verdicts = []
    for _, r in viol.iterrows():
        v = audit.verdict(int(r["count"]), int(r["total"]), alpha=1 - r["nominal"], confidence=opt.confidence)
        verdicts.append({**{k: r[k] for k in keys}, "passed": v.passed, "verdict": v.message})
    out = StudyOutput(
        tables={"verdicts": pd.DataFrame(verdicts), "rates": table},
        details={"images": audit.classify(rows)},
        figures={"audit": figures.audit_figure(table)},
    )
    out.notes += [str(v["verdict"]) for v in verdicts]
    return out


def _stability(rows: pd.DataFrame, config: Mapping[str, Any], opt: ReportOptions) -> StudyOutput:
    images = stability.per_image(rows)
    table = stability.stability_table(rows)
    return StudyOutput(
        tables={"stability": table},
        details={"images": images},
        figures={"stability": figures.stability_figure(table)},
        notes=["reported: mean over images of std/|mean| of repeated predictions (in %); "
               "rel_max_* is the worst |s - mean|/|mean|"],
    )


def _beyond(rows: pd.DataFrame, config: Mapping[str, Any], opt: ReportOptions) -> StudyOutput:
    table = beyond.beyond_table(rows, confidence=opt.confidence, method=opt.interval, seed=opt.seed)
    return StudyOutput(
        tables={"curves": table},
        figures={"beyond": figures.beyond_figure(table)},
        notes=[f"bands: {opt.confidence:g} {'Student-t' if opt.interval == 't' else 'bootstrap'} "
               "interval of the mean relative quality change (adv - clean)/|clean|, negated for lower-is-better scores"],
    )


def _guarantee(rows: pd.DataFrame, config: Mapping[str, Any], opt: ReportOptions) -> StudyOutput:
    table = guarantee.guarantee_table(rows, bins=opt.bins)
    return StudyOutput(tables={"bins": table}, figures={"guarantee": figures.guarantee_figure(table)})


STUDIES: dict[str, Study] = {
    s.name: s
    for s in (
        Study("correlation", "Correlation with subjective scores",
              "SRCC / PLCC (after the 4-parameter logistic) as mean ± SEM across models and seeds "
              "(FS-IQA Tables 1-2 layout).", _correlation),
        Study("audit", "Certificate audit",
              "Do certified bounds hold at attacked points? Violations count only when the whole "
              "confidence interval of the attacked median lies outside [lower, upper].", _audit),
        Study("stability", "Output stability",
              "Relative deviation of repeated predictions of one image with different seeds.", _stability),
        Study("beyond", "Beyond the certificate",
              "Relative score change under attacks larger than the certified radius (FS-IQA Figure 4).",
              _beyond),
        Study("guarantee", "Shape of the guarantee",
              "Mean bound width versus certified radius over quantile bins of eps_x (FS-IQA Figure 3).",
              _guarantee),
    )
}


def list_studies() -> list[str]:
    return list(STUDIES)
