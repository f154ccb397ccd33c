"""Certificate audit: do certified bounds hold at attacked points?

For each certified image the runner attacks the defense inside the certified
ball (``||x' - x||_2 <= eps_x``) and estimates the defended score at ``x'`` (the
median of the smoothed model) from ``n_audit`` fresh noise samples.  A
certificate *holds* when the defended score lies in ``[lower, upper]``.

Sampling error.  The median at ``x'`` is only estimated.  This module uses the
distribution-free confidence interval for a median from order statistics
(e.g. Hollander, Wolfe & Chicken, *Nonparametric Statistical Methods*, sec. 3.6):
with ``K ~ Binomial(n, 1/2)`` the number of samples below the true median ``m``,

    P(X_(l) <= m <= X_(u)) >= P(l <= K <= u - 1),

so taking ``u = n + 1 - l`` and the largest ``l >= 1`` with
``P(K <= l - 1) <= (1 - c) / 2`` gives coverage ``1 - 2 P(K <= l - 1) >= c``
(:func:`median_ci_indices` and :func:`median_ci_coverage`, from
:mod:`robustbench_iqa.order_statistics`).
An image counts as a **violation** only when that whole interval lies outside
``[lower, upper]``, as **inconclusive** when it straddles a bound, and as
**holds** when it lies inside.  The per-image confidence defaults to 0.9999 so
that sampling error alone produces far fewer false violations than the nominal
error ``1 - alpha`` of a certificate.

Besides violations the audit counts (b) images where the feature change
``||B(x') - B(x)||_2`` exceeded the feature radius the bounds were computed for
(FS-IQA: sigma_f; the premise of the Input Variation Estimator failed) and (c)
abstentions.  Every rate comes with a Clopper-Pearson interval
(``statsmodels`` ``proportion_confint(method="beta")``) next to the nominal
error ``1 - alpha``; :func:`verdict` fails a certificate when the lower end of
the violation rate's interval exceeds the nominal error.

Per-image input frame:
    required ``lower, upper, abstained, median_ci_low, median_ci_high``;
    optional ``attacked_median, feature_change, feature_radius, alpha`` and the
    grouping keys ``model, defense, sigma``.
    :func:`attacked_point_summary` turns the raw samples into the median columns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from robustbench_iqa.analysis._common import as_float_array, present, require_columns
from robustbench_iqa.errors import InputError
from robustbench_iqa.order_statistics import median_ci_coverage as median_ci_coverage
from robustbench_iqa.order_statistics import median_ci_indices as median_ci_indices

DEFAULT_MEDIAN_CONFIDENCE = 0.9999
STATUSES = ("holds", "inconclusive", "violation", "abstained")
KINDS = ("violation", "inconclusive", "premise_failed", "abstained")


def _check_confidence(confidence: float, name: str = "confidence") -> float:
    c = float(confidence)
    if not (0.0 < c < 1.0):
        raise InputError(f"{name} must lie in (0, 1), got {confidence}")
    return c


def median_confidence_interval(
    sorted_samples: object, confidence: float = DEFAULT_MEDIAN_CONFIDENCE
) -> tuple[np.ndarray, np.ndarray]:
    """Distribution-free CI ``(X_(l), X_(u))`` of the median from sorted samples.

    ``sorted_samples`` is ``(n,)`` or ``(B, n)``, sorted ascending along the last
    axis (e.g. the ``n_audit`` defended scores at an attacked point).  Returns
    arrays of shape ``()`` or ``(B,)``; coverage is at least ``confidence`` for any
    distribution (exactly :func:`median_ci_coverage` for continuous ones).
    """
    s = as_float_array(sorted_samples, "samples")
    if s.ndim not in (1, 2) or s.shape[-1] == 0:
        raise InputError(f"samples must have shape (n,) or (B, n), got {s.shape}")
    if not np.all(np.isfinite(s)):
        raise InputError("samples contain NaN or inf")
    if np.any(np.diff(s, axis=-1) < 0):
        raise InputError("samples must be sorted ascending along the last axis")
    lo, hi = median_ci_indices(s.shape[-1], confidence)
    return s[..., lo - 1], s[..., hi - 1]


def attacked_point_summary(
    samples: object, confidence: float = DEFAULT_MEDIAN_CONFIDENCE
) -> pd.DataFrame:
    """Columns ``attacked_median, median_ci_low, median_ci_high, n_audit`` from raw ``(B, n)`` samples."""
    s = np.sort(as_float_array(samples, "samples"), axis=-1)
    s = s.reshape(1, -1) if s.ndim == 1 else s
    lo, hi = median_confidence_interval(s, confidence)
    return pd.DataFrame(
        {
            "attacked_median": np.median(s, axis=-1),
            "median_ci_low": lo,
            "median_ci_high": hi,
            "n_audit": s.shape[-1],
        }
    )


def classify(records: pd.DataFrame, *, premise_tolerance: float = 0.0) -> pd.DataFrame:
    """Per-image ``status`` (holds / inconclusive / violation / abstained) and ``premise_failed``.

    ``premise_failed`` is True when ``feature_change > (1 + premise_tolerance) * feature_radius``
    (the gate's rule; NaN-safe: False when either is missing).  Status for certified images compares the median
    CI with ``[lower, upper]`` as in the module docstring.
    """
    require_columns(records, ["lower", "upper", "abstained", "median_ci_low", "median_ci_high"], "audit")
    df = records.copy()
    abst = df["abstained"].astype(bool).to_numpy()
    lower = df["lower"].astype(float).to_numpy()
    upper = df["upper"].astype(float).to_numpy()
    lo = df["median_ci_low"].astype(float).to_numpy()
    hi = df["median_ci_high"].astype(float).to_numpy()
    bad = ~abst & ~(np.isfinite(lower) & np.isfinite(upper) & np.isfinite(lo) & np.isfinite(hi))
    if bad.any():
        raise InputError(f"audit: {int(bad.sum())} certified row(s) lack finite bounds or median CI")
    if np.any(~abst & (lo > hi)):
        raise InputError("audit: median_ci_low > median_ci_high in some rows")
    outside = (hi < lower) | (lo > upper)
    inside = (lo >= lower) & (hi <= upper)
    status = np.where(outside, "violation", np.where(inside, "holds", "inconclusive"))
    df["status"] = np.where(abst, "abstained", status)
    if "feature_change" in df and "feature_radius" in df:
        fc = df["feature_change"].astype(float).to_numpy()
        fr = df["feature_radius"].astype(float).to_numpy()
        with np.errstate(invalid="ignore"):
            df["premise_failed"] = ~abst & np.isfinite(fc) & np.isfinite(fr) & (fc > (1.0 + premise_tolerance) * fr)
    else:
        df["premise_failed"] = False
    return df


def _has_premise(g: pd.DataFrame) -> bool:
    return "feature_change" in g and bool(np.isfinite(g["feature_change"].astype(float).to_numpy()).any())


def clopper_pearson(count: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval of a binomial proportion (NaN, NaN if total == 0)."""
    c = _check_confidence(confidence)
    if total == 0:
        return math.nan, math.nan
    if not (0 <= count <= total):
        raise InputError(f"count {count} must lie in [0, total={total}]")
    lo, hi = proportion_confint(count, total, alpha=1.0 - c, method="beta")
    return float(lo), float(hi)


@dataclass(frozen=True)
class Verdict:
    """Outcome of :func:`verdict`."""

    passed: bool
    violations: int
    certified: int
    rate: float
    ci_low: float
    ci_high: float
    nominal: float
    message: str


def verdict(violations: int, certified: int, *, alpha: float, confidence: float = 0.95) -> Verdict:
    """Fail when the Clopper-Pearson lower bound of the violation rate exceeds ``1 - alpha``.

    Rates at or below the nominal error are consistent with a correct certificate;
    the test only fails when the data are *significantly* worse than promised.
    """
    a = _check_confidence(alpha, "alpha")
    nominal = 1.0 - a
    lo, hi = clopper_pearson(violations, certified, confidence)
    rate = violations / certified if certified else math.nan
    passed = not (certified > 0 and lo > nominal)
    # "holds" only when the observed rate is at or below the nominal error: above it, the test
    # says no more than "not significantly above".
    word = "FAILS" if not passed else "holds" if not (rate > nominal) else "not significantly above nominal"
    msg = (
        f"certificate {word}: {violations}/{certified} violations, rate {rate:.4g} "
        f"(CP {confidence:g}: [{lo:.4g}, {hi:.4g}]) vs nominal error {nominal:.4g}"
    )
    if certified == 0:
        msg = "no certified images to audit"
    return Verdict(passed, violations, certified, rate, lo, hi, nominal, msg)


def audit_table(
    records: pd.DataFrame,
    *,
    alpha: float | None = None,
    confidence: float = 0.95,
    by: Sequence[str] = ("model", "defense", "sigma"),
    premise_tolerance: float = 0.0,
) -> pd.DataFrame:
    """Long table: per group and kind, ``count, total, rate, ci_low, ci_high, nominal``.

    Denominators: abstentions over all images; violations, inconclusive and
    premise failures over certified images.  ``nominal`` (= 1 - alpha) is filled
    for violations only; ``passed`` is the :func:`verdict` of the group.  ``alpha``
    comes from the argument or, per group, from an ``alpha`` column.
    """
    df = classify(records, premise_tolerance=premise_tolerance)
    keys = present(df, by)
    rows = []
    for key, g in df.groupby(keys, sort=True) if keys else [((), df)]:
        key = key if isinstance(key, tuple) else (key,)
        a = _group_alpha(g, alpha)
        cert = int((g["status"] != "abstained").sum())
        counts = {
            "violation": (int((g["status"] == "violation").sum()), cert),
            "inconclusive": (int((g["status"] == "inconclusive").sum()), cert),
            # a defense without a premise (no feature change measured) has no premise rate
            "premise_failed": (int(g["premise_failed"].sum()), cert if _has_premise(g) else 0),
            "abstained": (int((g["status"] == "abstained").sum()), len(g)),
        }
        v = verdict(counts["violation"][0], cert, alpha=a, confidence=confidence)
        for kind in KINDS:
            count, total = counts[kind]
            lo, hi = clopper_pearson(count, total, confidence)
            rows.append(
                {
                    **dict(zip(keys, key)),
                    "kind": kind,
                    "count": count,
                    "total": total,
                    "rate": count / total if total else math.nan,
                    "ci_low": lo,
                    "ci_high": hi,
                    "nominal": 1.0 - a if kind == "violation" else math.nan,
                    "passed": v.passed,
                }
            )
    return pd.DataFrame(rows)


def _group_alpha(g: pd.DataFrame, alpha: float | None) -> float:
    if alpha is not None:
        return _check_confidence(alpha, "alpha")
    if "alpha" not in g:
        raise InputError("audit: give alpha, or an `alpha` column in the records")
    values = g["alpha"].dropna().astype(float).unique()
    if len(values) != 1:
        raise InputError(f"audit: one group has {len(values)} different alpha values; split it first")
    return _check_confidence(values[0], "alpha")


def binomial_upper_pvalue(count: int, total: int, p0: float) -> float:
    """One-sided exact binomial p-value of H0: rate <= p0 against rate > p0, P(Bin(total, p0) >= count).

    Equals ``scipy.stats.binomtest(count, total, p0, alternative="greater").pvalue``; 1.0 when
    ``total`` is 0 (no evidence against H0).
    """
    if total == 0:
        return 1.0
    if not (0 <= count <= total):
        raise InputError(f"count {count} must lie in [0, total={total}]")
    if not (0.0 <= p0 <= 1.0):
        raise InputError(f"p0 must lie in [0, 1], got {p0}")
    return float(stats.binom.sf(count - 1, total, p0))


def holm(pvalues: Sequence[float], *, level: float) -> list[bool]:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise error ``level``.

    Sort the m p-values ascending; reject p_(1), p_(2), ... while p_(i) <= level / (m - i + 1)
    (Holm 1979; equals ``statsmodels.stats.multitest.multipletests(method="holm")``).
    """
    if not (0.0 < level < 1.0):
        raise InputError(f"level must lie in (0, 1), got {level}")
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    rejected = [False] * m
    for rank, i in enumerate(order):
        if pvalues[i] <= level / (m - rank):
            rejected[i] = True
        else:
            break
    return rejected
