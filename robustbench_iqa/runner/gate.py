"""The gate's verdict, computed once from a run's store and stored in it.

Measure once, judge once: the studies' jobs write raw rows; :func:`evaluate` loads
the run's tables once (:class:`~robustbench_iqa.studies.base.RunData`), asks every
active study for its checks and headline numbers, adds the generic finite check
(every field a row schema marks ``finite`` must be a finite number on rows that did
not abstain), fails a judging study that found nothing to judge, and writes the verdict to the store (``meta["gate"]``), where the
report and later readers find it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from robustbench_iqa.headline import summary_columns
from robustbench_iqa.runner.config import VerifyConfig
from robustbench_iqa.store import ResultsStore
from robustbench_iqa.studies.base import Check, Group, Row, RunData, Study, get_study


@dataclass
class GateResult:
    """Every check and the summary table (one row per (model, defense, sigma))."""

    checks: list[Check]
    summary: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [c.to_dict() for c in self.checks],
                "columns": summary_columns(self.summary),  # the summary's keys are stored sorted
                "summary": [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}
                            for r in self.summary]}


def finite_checks(data: RunData, schemas: list[type[Row]]) -> list[Check]:
    """Per table and group: the schema's ``finite`` fields are finite on rows that did not abstain."""
    out = []
    for schema in schemas:
        cols = schema.finite_columns()
        for (m, d, s), g in data.groups(schema):
            if "abstained" in g:
                g = g[~g["abstained"].fillna(0).astype(bool)]
            bad = []
            for c in cols:
                v = pd.to_numeric(g[c], errors="coerce").to_numpy(dtype=float)
                if not np.all(np.isfinite(v)):
                    bad.append(f"{c}: {int((~np.isfinite(v)).sum())} non-finite")
            out.append(Check(f"finite ({schema.table})", m, d, s, not bad, "; ".join(bad) or f"{len(g)} rows finite"))
    return out


def _nothing_judged(study: Any) -> list[Check]:
    """A failed check for an active study that judges (it overrides ``checks``) but found nothing
    to judge: a gate never passes without the checks it was configured to run."""
    if type(study).checks is Study.checks:
        return []
    return [Check("ran", "-", "-", 0.0, False,
                  f"study {study.name!r} is active but produced no check (no rows it can judge: "
                  f"e.g. only empirical defenses, or no input it applies to)")]


def evaluate(store: ResultsStore, cfg: VerifyConfig) -> GateResult:
    """Every active study's checks and summary on the store's rows; the verdict is stored too."""
    data = RunData(store)
    studies = [get_study(n) for n in cfg.active_studies()]
    schemas: list[type[Row]] = []
    for st in studies:
        schemas += [t for t in st.tables if t not in schemas]
    checks = finite_checks(data, schemas)
    summary: dict[Group, dict[str, Any]] = {}
    for st in studies:
        checks += st.checks(data, cfg) or _nothing_judged(st)
        for group, row in st.summary(data, cfg).items():
            summary.setdefault(group, {}).update(row)
    rows = []
    for (m, d, s), row in sorted(summary.items()):
        mine = [c for c in checks if c.model == m and c.defense in (d, "none") and (c.sigma == s or c.defense == "none")]
        rows.append({"model": m, "defense": d, "sigma": s, **row,
                     "gate": "PASS" if mine and all(c.passed for c in mine) else "FAIL"})
    result = GateResult(checks, rows)
    store.put_meta("gate", result.to_dict())
    return result
