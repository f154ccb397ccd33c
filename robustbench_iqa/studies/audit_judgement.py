"""The audit gate's judgement pieces: allowed rates, wording that matches the test, radius kinds.

Small pure functions over the audit study's row frames (:mod:`robustbench_iqa.studies.audit`),
kept apart from the study so that each reads and tests on its own.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from robustbench_iqa.studies.audit_probes import SOUND_KINDS
from robustbench_iqa.studies.base import Group

if TYPE_CHECKING:
    from robustbench_iqa.studies.context import RunConfig


def radii_table_rows(group: Group, rows: Any) -> list[dict[str, Any]]:
    """The report's ``radii`` table for one group: per probe (claimed or planted radius) the images,
    median radius, interval violations, largest feature change / sigma_f and claims above the
    recomputed radius.  ``rows``: classified probe rows (:func:`audit_probes.classify`)."""
    out = []
    for (probe, kind, planted), g in rows.groupby(["probe", "radius_kind", "planted"], sort=True):
        fc = (g["feature_change"].astype(float) / g["feature_radius"].astype(float)).to_numpy()
        rec = _numeric(g["recomputed_radius"])
        over = int((np.isfinite(rec) & (g["radius"].astype(float).to_numpy() > rec * (1 + 1e-6))).sum())
        out.append({"model": group[0], "defense": group[1], "sigma": group[2], "probe": probe,
                    "radius_kind": kind, "planted": bool(planted), "images": len(g),
                    "median_radius": float(g["radius"].astype(float).median()),
                    "violations": int((g["status"] == "violation").sum()),
                    "max_feature_ratio": float(np.nanmax(fc)) if np.isfinite(fc).any() else math.nan,
                    "above_recomputed": over})
    return out


def _numeric(col: Any) -> np.ndarray:
    import pandas as pd

    return pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)


def binomial_wording(k: int, n: int, p0: float, p: float, rejected: bool, what: str) -> str:
    """The verdict of the one-sided binomial test of H0: rate <= p0, in words that match the test.

    ``FAILS`` when rejected; ``holds`` only when the observed rate is at or below the allowed one;
    otherwise "above allowed, not significant" (the test only says the rate is not significantly above).
    """
    rate = k / n if n else math.nan
    word = "FAILS" if rejected else "holds" if rate <= p0 else "above allowed, not significant"
    return (f"{word}: {k}/{n} {what} (rate {rate:.3g}) vs allowed {p0:.3g}; one-sided binomial p = {p:.3g}")


def too_narrow(c: Any) -> tuple[int, int]:
    """(images whose lower bound lies above the upper confidence bound of its quantile, or upper below
    the lower one; images checked) among certified rows with the recomputed quantiles."""
    q_lo, q_hi = c["quantile_lo_ucb"].astype(float).to_numpy(), c["quantile_hi_lcb"].astype(float).to_numpy()
    ok = np.isfinite(q_lo) & np.isfinite(q_hi) & ~c["abstained"].astype(bool).to_numpy()
    lower, upper = c["lower"].astype(float).to_numpy(), c["upper"].astype(float).to_numpy()
    bad = ok & ((lower > q_lo) | (upper < q_hi))
    return int(bad.sum()), int(ok.sum())


def allowed_rate(c: Any, cfg: RunConfig) -> float:
    """The violation rate allowed per image: (1 - alpha) + 2 (1 - c) (module docstring)."""
    sec = cfg.section("audit")
    alpha = float(c["alpha"].astype(float).dropna().iloc[0]) if c["alpha"].notna().any() else cfg.alpha
    conf = float(c["confidence"].astype(float).dropna().iloc[0]) if c["confidence"].notna().any() \
        else sec.confidence
    return (1.0 - alpha) + 2.0 * (1.0 - conf)


def eps_x_kind(defense: str) -> str:
    """What a defense's ``eps_x`` is: FS-IQA's (feature space) the first-order estimate, an input-space
    defense's its certified input radius (registry metadata, not the name)."""
    from robustbench_iqa.certify.defense import DEFENSES

    space = DEFENSES.metadata(defense).get("space") if defense in DEFENSES else None
    return "first_order" if space == "feature" else "input radius (certified)" if space == "input" else "eps_x"


def headline_kind(setting: str, rows: Any, eps_x: str = "first_order") -> str:
    """The radius kind the run certifies: ``setting``, or for ``auto`` the sound radius every audited
    image carries (the larger median of Lipschitz and local), else ``eps_x``'s kind (:func:`eps_x_kind`)."""
    if setting != "auto":
        return setting
    if rows is None or rows.empty:
        return eps_x
    honest = rows[~rows["planted"].astype(bool)]
    images = set(rows["image"])
    best, best_radius = eps_x, -1.0
    for kind in SOUND_KINDS:
        g = honest[honest["radius_kind"] == kind]
        if set(g["image"]) == images and not g.empty and float(g["radius"].median()) > best_radius:
            best, best_radius = kind, float(g["radius"].median())
    return best
