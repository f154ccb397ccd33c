"""MS_Cert order statistics against a brute-force binomial computation and Monte Carlo."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import expon, norm

from robustbench_iqa.certify.bounds import (
    min_samples,
    order_statistic_indices,
    percentile_bounds,
    percentile_levels,
)
from robustbench_iqa.errors import InputError


def _brute(n: int, p_lo: float, p_hi: float, a: float) -> tuple[int, int] | None:
    """Pure-Python binomial sums, independent of scipy."""

    def pmf(k: int, p: float) -> float:
        return math.comb(n, k) * p**k * (1 - p) ** (n - k)

    pm_lo = [pmf(j, p_lo) for j in range(n + 1)]
    pm_hi = [pmf(j, p_hi) for j in range(n + 1)]
    k_lower = None
    for k in range(1, n + 1):
        if sum(pm_lo[k:]) >= 1 - a:  # P(Bin >= k)
            k_lower = k
    k_upper = None
    for k in range(n, 0, -1):
        if sum(pm_hi[:k]) >= 1 - a:  # P(Bin <= k - 1)
            k_upper = k
    if k_lower is None or k_upper is None:
        return None
    return k_lower, k_upper


@pytest.mark.parametrize("n", [1, 5, 20, 44, 45, 100, 257])
@pytest.mark.parametrize("sigma,eps", [(0.25, 0.25), (0.5, 0.1), (0.1, 0.3), (1.0, 0.0)])
@pytest.mark.parametrize("alpha", [0.9, 0.99, 0.999])
def test_indices_match_brute_force(n: int, sigma: float, eps: float, alpha: float) -> None:
    p_lo, p_hi = norm.cdf(-eps / sigma), norm.cdf(eps / sigma)
    expected = _brute(n, p_lo, p_hi, (1 - alpha) / 2)
    got = order_statistic_indices(n, sigma=sigma, eps=eps, alpha=alpha)
    if expected is None or got is None:
        assert got == expected
    else:
        # Floating sums may differ from scipy in the last ulp only at exact ties.
        assert abs(got[0] - expected[0]) <= 0 and abs(got[1] - expected[1]) <= 0


def test_paper_setting_indices_are_tight() -> None:
    """At n=2000, alpha=0.999, eps=sigma: the indices are the extreme valid ones."""
    from scipy.stats import binom

    n, alpha = 2000, 0.999
    a = (1 - alpha) / 2
    p_lo, p_hi = percentile_levels(sigma=0.25, eps=0.25)
    k_lo, k_hi = order_statistic_indices(n, sigma=0.25, eps=0.25, alpha=alpha)  # type: ignore[misc]
    assert binom.sf(k_lo - 1, n, p_lo) >= 1 - a > binom.sf(k_lo, n, p_lo)
    assert binom.cdf(k_hi - 1, n, p_hi) >= 1 - a > binom.cdf(k_hi - 2, n, p_hi)
    assert k_lo < n * p_lo < n * p_hi < k_hi


@pytest.mark.parametrize("sigma,eps,alpha", [(0.25, 0.25, 0.999), (0.5, 0.2, 0.99), (0.1, 0.05, 0.9)])
def test_min_samples_is_the_first_n_with_a_bound(sigma: float, eps: float, alpha: float) -> None:
    m = min_samples(sigma=sigma, eps=eps, alpha=alpha)
    assert order_statistic_indices(m, sigma=sigma, eps=eps, alpha=alpha) is not None
    for n in range(max(1, m - 3), m):
        assert order_statistic_indices(n, sigma=sigma, eps=eps, alpha=alpha) is None
    p_lo, p_hi = norm.cdf(-eps / sigma), norm.cdf(eps / sigma)
    assert _brute(m, p_lo, p_hi, (1 - alpha) / 2) is not None
    assert _brute(m - 1, p_lo, p_hi, (1 - alpha) / 2) is None


def test_percentile_bounds_pick_the_sorted_samples() -> None:
    rng = np.random.default_rng(0)
    s = rng.normal(size=500)
    k_lo, k_hi = order_statistic_indices(500, sigma=1.0, eps=1.0, alpha=0.99)  # type: ignore[misc]
    lo, hi = percentile_bounds(s, sigma=1.0, eps=1.0, alpha=0.99)  # type: ignore[misc]
    srt = np.sort(s)
    assert lo == srt[k_lo - 1] and hi == srt[k_hi - 1]
    assert lo < np.median(s) < hi


@pytest.mark.parametrize("dist", [norm(0, 1), expon(scale=2.0)])
def test_monte_carlo_coverage_within_nominal_error(dist) -> None:  # type: ignore[no-untyped-def]
    """Each bound misses its true percentile at most at the nominal rate a = (1-alpha)/2."""
    from scipy.stats import binom

    n, sigma, eps, alpha, reps = 200, 1.0, 0.5, 0.8, 4000
    a = (1 - alpha) / 2
    p_lo, p_hi = percentile_levels(sigma=sigma, eps=eps)
    q_lo, q_hi = dist.ppf(p_lo), dist.ppf(p_hi)
    rng = np.random.default_rng(1)
    draws = np.sort(dist.rvs(size=(reps, n), random_state=rng), axis=1)
    k_lo, k_hi = order_statistic_indices(n, sigma=sigma, eps=eps, alpha=alpha)  # type: ignore[misc]
    miss_lo = int(np.sum(draws[:, k_lo - 1] > q_lo))
    miss_hi = int(np.sum(draws[:, k_hi - 1] < q_hi))
    tol = binom.ppf(0.999, reps, a)
    assert miss_lo <= tol and miss_hi <= tol
    # The bound is tight, not vacuous: misses occur at a rate close to a.
    assert miss_lo >= binom.ppf(0.001, reps, a * 0.5)
    # An off-by-one (0-based) index for the lower bound would break coverage.
    miss_lo_wrong = int(np.sum(draws[:, k_lo] > q_lo))
    assert miss_lo_wrong > miss_lo


def test_too_few_samples_gives_none_and_clear_errors() -> None:
    assert order_statistic_indices(10, sigma=0.25, eps=0.25, alpha=0.999) is None
    assert percentile_bounds(np.arange(10.0), sigma=0.25, eps=0.25, alpha=0.999) is None
    with pytest.raises(InputError, match="sigma"):
        order_statistic_indices(100, sigma=0.0, eps=0.1, alpha=0.9)
    with pytest.raises(InputError, match="alpha"):
        order_statistic_indices(100, sigma=0.1, eps=0.1, alpha=1.0)
    with pytest.raises(InputError, match="n must be"):
        order_statistic_indices(0, sigma=0.1, eps=0.1, alpha=0.9)
    with pytest.raises(InputError, match="NaN"):
        percentile_bounds([0.0, float("nan")] * 50, sigma=0.1, eps=0.1, alpha=0.9)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(min_value=50, max_value=400),
    seed=st.integers(min_value=0, max_value=10_000),
    ratio=st.floats(min_value=0.05, max_value=1.0),
)
def test_bounds_bracket_the_median(n: int, seed: int, ratio: float) -> None:
    s = np.random.default_rng(seed).standard_t(3, size=n)
    b = percentile_bounds(s, sigma=1.0, eps=ratio, alpha=0.9)
    if b is not None:
        assert b[0] <= np.median(s) <= b[1]
