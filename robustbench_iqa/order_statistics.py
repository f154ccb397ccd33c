"""The distribution-free confidence interval of a median from order statistics.

With ``X_(1) <= ... <= X_(n)`` the sorted draws and ``K ~ Binomial(n, 1/2)`` the number
of draws below the population median ``m`` (Hollander, Wolfe & Chicken, *Nonparametric
Statistical Methods*, sec. 3.6),

    P(X_(l) <= m <= X_(u)) >= P(l <= K <= u - 1),

so taking ``u = n + 1 - l`` and the largest ``l >= 1`` with ``P(K <= l - 1) <= (1 - c) / 2``
gives coverage ``1 - 2 P(K <= l - 1) >= c`` for any distribution (exactly that value for a
continuous one).

A ground module: the defenses' bounds (:func:`robustbench_iqa.certify.bounds.median_intervals`)
and the certificate audit (:mod:`robustbench_iqa.analysis.audit`) both read these indices.
"""

from __future__ import annotations

import math

from scipy import stats

from robustbench_iqa.errors import InputError


def _check_confidence(confidence: float) -> float:
    c = float(confidence)
    if not (0.0 < c < 1.0):
        raise InputError(f"confidence must lie in (0, 1), got {confidence}")
    return c


def median_ci_indices(n: int, confidence: float) -> tuple[int, int]:
    """1-based order-statistic indices ``(l, n + 1 - l)`` of the median CI (see module doc)."""
    c = _check_confidence(confidence)
    if int(n) != n or n < 1:
        raise InputError(f"sample count must be a positive integer, got {n}")
    n = int(n)
    q = (1.0 - c) / 2.0
    k = int(stats.binom.ppf(q, n, 0.5))  # smallest k with cdf(k) >= q
    if stats.binom.cdf(k, n, 0.5) > q:
        k -= 1  # largest k with cdf(k) <= q
    if k < 0:
        need = math.ceil(math.log2(2.0 / (1.0 - c)))
        raise InputError(
            f"{n} samples are too few for a {c:g} confidence interval of the median; need >= {need}"
        )
    lo = k + 1
    return lo, n + 1 - lo


def median_ci_coverage(n: int, lo: int, hi: int) -> float:
    """Exact coverage ``P(lo <= K <= hi - 1)``, K ~ Binomial(n, 1/2), of ``[X_(lo), X_(hi)]``."""
    return float(stats.binom.cdf(hi - 1, n, 0.5) - stats.binom.cdf(lo - 1, n, 0.5))
