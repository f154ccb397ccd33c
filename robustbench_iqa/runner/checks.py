"""The checks of the verify gate, computed from the results store alone.

A check fails when

- **violations**: the Clopper-Pearson lower bound of the audited violation rate
  exceeds the certificate's nominal error ``1 - alpha`` (:func:`robustbench_iqa.analysis.audit.verdict`);
- **abstentions**: the abstention rate exceeds ``max_abstain_rate``;
- **stability**: the mean relative standard deviation of repeated predictions at
  the run's ``n`` (or the largest n studied) exceeds ``max_stability_deviation``
  (a fraction: 0.01 is 1%);
- **finite**: any score, bound or attacked estimate that should be a number is
  NaN or infinite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from robustbench_iqa.analysis import audit, beyond, stability
from robustbench_iqa.runner.config import VerifyConfig
from robustbench_iqa.store import ResultsStore

FINITE_COLUMNS: dict[str, tuple[str, ...]] = {
    "correlation": ("score",),
    "guarantee": ("score", "lower", "upper", "eps_x"),
    "audit": ("attacked_median", "median_ci_low", "median_ci_high"),
    "stability": ("score",),
    "beyond": ("clean", "adv"),
}
"""Per study, the columns that must be finite (on rows that did not abstain)."""


@dataclass(frozen=True)
class Check:
    name: str
    model: str
    defense: str
    sigma: float
    passed: bool
    detail: str


def _groups(df: pd.DataFrame) -> list[tuple[str, str, float, pd.DataFrame]]:
    if df.empty:
        return []
    return [(str(m), str(d), float(s), g) for (m, d, s), g in df.groupby(["model", "defense", "sigma"], sort=True)]


def finite_checks(store: ResultsStore) -> list[Check]:
    out = []
    for study, cols in FINITE_COLUMNS.items():
        df = store.frame(study)
        for m, d, sg, g in _groups(df):
            if "abstained" in g:
                g = g[~g["abstained"].astype(bool)]
            bad = []
            for c in cols:
                if c not in g:
                    continue
                v = pd.to_numeric(g[c], errors="coerce").to_numpy(dtype=float)
                if not np.all(np.isfinite(v)):
                    bad.append(f"{c}: {int((~np.isfinite(v)).sum())} non-finite")
            out.append(Check(f"finite ({study})", m, d, sg, not bad, "; ".join(bad) or f"{len(g)} rows finite"))
    return out


def abstain_checks(store: ResultsStore, cfg: VerifyConfig) -> list[Check]:
    out = []
    for m, d, sg, g in _groups(store.frame("guarantee")):
        k, n = int(g["abstained"].astype(bool).sum()), len(g)
        rate = k / n
        out.append(Check("abstentions", m, d, sg, rate <= cfg.max_abstain_rate,
                         f"{k}/{n} = {rate:.1%} (max {cfg.max_abstain_rate:.1%})"))
    return out


def _finite_rows(df: pd.DataFrame, cols: tuple[str, ...]) -> pd.DataFrame:
    """Rows whose ``cols`` are finite, or that abstained (non-finite ones fail the finite check)."""
    if df.empty:
        return df
    ok = np.ones(len(df), dtype=bool)
    for c in cols:
        if c in df:
            ok &= np.isfinite(pd.to_numeric(df[c], errors="coerce").to_numpy(dtype=float))
    if "abstained" in df:
        ok |= df["abstained"].astype(bool).to_numpy()
    return df[ok]


def audit_checks(store: ResultsStore, cfg: VerifyConfig, *, confidence: float = 0.95) -> list[Check]:
    out = []
    for m, d, sg, g in _groups(_finite_rows(store.frame("audit"), FINITE_COLUMNS["audit"])):
        c = audit.classify(g)
        certified = int((c["status"] != "abstained").sum())
        viol = int((c["status"] == "violation").sum())
        v = audit.verdict(viol, certified, alpha=cfg.alpha, confidence=confidence)
        out.append(Check("certificate audit", m, d, sg, v.passed, v.message))
    return out


def stability_n(cfg: VerifyConfig) -> int:
    """The n at which stability is gated: the run's n if studied, else the largest studied."""
    ns = [int(v) for v in cfg.stability_n]
    return cfg.n if cfg.n in ns else max(ns)


def stability_checks(store: ResultsStore, cfg: VerifyConfig) -> list[Check]:
    df = _finite_rows(store.frame("stability"), FINITE_COLUMNS["stability"])
    if df.empty:
        return []
    table = stability.summarize(stability.per_image(df))
    n = stability_n(cfg)
    out = []
    for _, r in table[table["n"] == n].iterrows():
        dev = float(r["rel_std_mean"])
        ok = math.isfinite(dev) and dev <= cfg.max_stability_deviation
        out.append(Check("stability", str(r["model"]), str(r["defense"]), float(r["sigma"]), ok,
                         f"mean relative std {dev:.4%} at n={n} (max {cfg.max_stability_deviation:.2%})"))
    return out


def all_checks(store: ResultsStore, cfg: VerifyConfig) -> list[Check]:
    return [*finite_checks(store), *abstain_checks(store, cfg), *audit_checks(store, cfg),
            *stability_checks(store, cfg)]


def _quality_gain(rows: pd.DataFrame, norm: float) -> float:
    """Mean relative change of the apparent quality at ``norm`` (> 0: the attack raised it)."""
    r = rows[rows["norm"].astype(float) == norm]
    if r.empty:
        return math.nan
    return float(beyond.beyond_table(r)["mean"].iloc[0])


def summary_rows(store: ResultsStore, cfg: VerifyConfig, checks: list[Check]) -> list[dict[str, Any]]:
    """One row per (model, defense, sigma): headline numbers of every study and the gate's verdict."""
    gq, au, st, be, co = (_finite_rows(store.frame(s), FINITE_COLUMNS[s])
                          for s in ("guarantee", "audit", "stability", "beyond", "correlation"))

    def pick(df: pd.DataFrame, m: str, d: str, sg: float) -> pd.DataFrame:
        if df.empty:
            return df
        return df[(df["model"] == m) & (df["defense"] == d) & (df["sigma"].astype(float) == sg)]

    rows = []
    for m, d, sg, g in _groups(gq):
        cert = g[~g["abstained"].astype(bool)]
        row: dict[str, Any] = {
            "model": m, "defense": d, "sigma": sg, "images": len(g), "abstained": len(g) - len(cert),
            "mean_width": float((cert["upper"].astype(float) - cert["lower"].astype(float)).mean())
            if len(cert) else math.nan,
            "mean_eps_x": float(cert["eps_x"].astype(float).mean()) if len(cert) else math.nan,
        }
        a = pick(au, m, d, sg)
        if len(a):
            c = audit.classify(a)
            row["violations"] = f"{int((c['status'] == 'violation').sum())}/{int((c['status'] != 'abstained').sum())}"
            row["inconclusive"] = int((c["status"] == "inconclusive").sum())
            row["premise_failed"] = int(c["premise_failed"].sum())
            if "feature_change" in a:  # how far past sigma_f the IVE premise was pushed, at worst
                ratio = a["feature_change"].astype(float) / a["feature_radius"].astype(float)
                row["max_feature_ratio"] = float(ratio.max())
        s = pick(st, m, d, sg)
        if len(s):
            t = stability.summarize(stability.per_image(s))
            t = t[t["n"] == stability_n(cfg)]
            row["stability_%"] = 100.0 * float(t["rel_std_mean"].iloc[0]) if len(t) else math.nan
        if not be.empty:
            top = float(max(cfg.beyond_norms))
            row[f"quality_gain@{top:g}_undefended"] = _quality_gain(pick(be, m, "none", 0.0), top)
            row[f"quality_gain@{top:g}_defended"] = _quality_gain(pick(be, m, d, sg), top)
        c2 = pick(co, m, d, sg)
        if len(c2):
            row["s/img_predict"] = float(c2["seconds_predict"].astype(float).mean())
            row["s/img_certify"] = float(c2["seconds_certify"].astype(float).mean())
        mine = [c for c in checks if c.model == m and ((c.defense, c.sigma) == (d, sg) or c.defense == "none")]
        row["gate"] = "PASS" if all(c.passed for c in mine) else "FAIL"
        rows.append(row)
    return rows
