"""Percentile bounds of median smoothing (MS_Cert).

Chiang et al. 2020, "Detection as Regression: Certified Object Detection with
Median Smoothing", Theorem 1 and its Monte-Carlo estimation (Sec. 4): for a
base function f, noise N(0, sigma^2 I) and a perturbation with ||u||_2 <= eps,
the median of f(x + u + e) lies between the p_lo- and p_hi-percentiles of
f(x + e), with p_lo = Phi(-eps/sigma) and p_hi = Phi(eps/sigma).  FS-IQA
(Shumitskaya et al., Theorem 2) applies it in feature space with eps = sigma_f,
so p_lo = Phi(-1) ~ 0.159 and p_hi = Phi(1) ~ 0.841.

The percentiles are estimated from n samples by order statistics, widened for
confidence: with X_(1) <= ... <= X_(n) the sorted samples and q_p the true
p-quantile of a continuous distribution,

    P(X_(k) <= q_p) = P(Binomial(n, p) >= k),
    P(X_(k) >= q_p) = P(Binomial(n, p) <= k - 1).

``alpha`` is the confidence of the joint two-sided statement; each side gets
error a = (1 - alpha) / 2 (union bound).  Indices are 1-based, as the binomial
argument is.  (The public reference code for median smoothing indexes its
sorted samples 0-based with these 1-based counts and swaps lower and upper;
this module does neither, and the tests check it against a brute-force
computation.)
"""

from __future__ import annotations

import math
import numbers
from functools import lru_cache

import numpy as np
import torch
from scipy.stats import binom, norm

from robustbench_iqa.errors import InputError
from robustbench_iqa.order_statistics import median_ci_indices
from robustbench_iqa.validation import MAX_SAMPLES, check_alpha, check_n, check_sigma


def _check_eps(eps: float) -> float:
    if not (isinstance(eps, numbers.Real) and not isinstance(eps, bool) and math.isfinite(eps) and eps >= 0):
        raise InputError(f"the radius eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


def percentile_levels(*, sigma: float, eps: float) -> tuple[float, float]:
    """(p_lo, p_hi) = (Phi(-eps/sigma), Phi(eps/sigma)), Chiang et al. 2020, Thm. 1."""
    sigma, eps = check_sigma(sigma), _check_eps(eps)
    r = eps / sigma
    return float(norm.cdf(-r)), float(norm.cdf(r))


@lru_cache(maxsize=256)
def _indices(n: int, p_lo: float, p_hi: float, a: float) -> tuple[int, int] | None:
    k = np.arange(1, n + 1)
    # k_lower: largest k >= 1 with P(Bin(n, p_lo) >= k) = sf(k - 1) >= 1 - a.
    ok_lo = binom.sf(k - 1, n, p_lo) >= 1.0 - a
    # k_upper: smallest k <= n with P(Bin(n, p_hi) <= k - 1) = cdf(k - 1) >= 1 - a.
    ok_hi = binom.cdf(k - 1, n, p_hi) >= 1.0 - a
    if not ok_lo.any() or not ok_hi.any():
        return None
    # sf is non-increasing and cdf non-decreasing in k, so these are the extreme indices.
    k_lower = int(k[ok_lo][-1])
    k_upper = int(k[ok_hi][0])
    return k_lower, k_upper


def order_statistic_indices(
    n: int, *, sigma: float, eps: float, alpha: float
) -> tuple[int, int] | None:
    """1-based indices (k_lower, k_upper) of the certified order statistics.

    k_lower is the largest k >= 1 with P(Binomial(n, p_lo) >= k) >= 1 - a;
    k_upper the smallest k <= n with P(Binomial(n, p_hi) <= k - 1) >= 1 - a;
    a = (1 - alpha) / 2.  Returns None (abstain) when either does not exist,
    i.e. n is too small for a bound at this radius and confidence.
    """
    n, alpha = check_n(n), check_alpha(alpha)
    p_lo, p_hi = percentile_levels(sigma=sigma, eps=eps)
    return _indices(n, p_lo, p_hi, (1.0 - alpha) / 2.0)


def min_samples(*, sigma: float, eps: float, alpha: float, n_max: int = 10_000_000) -> int:
    """Smallest n for which :func:`order_statistic_indices` exists (closed form).

    The lower index exists iff 1 - (1 - p_lo)^n >= 1 - a, the upper iff
    1 - p_hi^n >= 1 - a; both are monotone in n.
    """
    alpha = check_alpha(alpha)
    p_lo, p_hi = percentile_levels(sigma=sigma, eps=eps)
    a = (1.0 - alpha) / 2.0
    if p_lo <= 0.0 or p_hi >= 1.0:
        return n_max + 1
    n_lo = math.ceil(math.log(a) / math.log1p(-p_lo))
    n_hi = math.ceil(math.log(a) / math.log(p_hi))
    n = max(n_lo, n_hi, 1)
    if n > min(n_max, MAX_SAMPLES):  # beyond what any run can draw: the closed form is the answer
        return n
    # Guard against floating-point rounding at the boundary.
    while n > 1 and order_statistic_indices(n - 1, sigma=sigma, eps=eps, alpha=alpha) is not None:
        n -= 1
    while n <= n_max and order_statistic_indices(n, sigma=sigma, eps=eps, alpha=alpha) is None:
        n += 1
    return n


def require_indices(n: int, *, sigma: float, eps: float, alpha: float) -> tuple[int, int]:
    """Like :func:`order_statistic_indices` but raises a clear error when n is too small."""
    idx = order_statistic_indices(n, sigma=sigma, eps=eps, alpha=alpha)
    if idx is None:
        need = min_samples(sigma=sigma, eps=eps, alpha=alpha)
        raise InputError(
            f"n={n} samples are too few for percentile bounds at eps/sigma={eps / sigma:.3g} "
            f"and confidence alpha={alpha}; need n >= {need}"
        )
    return idx


def percentile_bounds(
    scores: np.ndarray | torch.Tensor | list[float], *, sigma: float, eps: float, alpha: float
) -> tuple[float, float] | None:
    """Certified (lower, upper) from one image's n samples, or None if n is too small.

    ``scores`` is 1-D; the bounds are X_(k_lower) and X_(k_upper) of the
    ascending-sorted samples.
    """
    s = scores.detach().cpu().numpy() if isinstance(scores, torch.Tensor) else np.asarray(scores)
    if s.ndim != 1:
        raise InputError(f"scores must be 1-D (the n samples of one image), got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise InputError("scores contain NaN or Inf values")
    idx = order_statistic_indices(len(s), sigma=sigma, eps=eps, alpha=alpha)
    if idx is None:
        return None
    srt = np.sort(s)
    return float(srt[idx[0] - 1]), float(srt[idx[1] - 1])


def sorted_percentile_bounds(
    sorted_scores: torch.Tensor, indices: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched form: rows of ascending-sorted samples (B, n) -> (lower (B,), upper (B,))."""
    k_lo, k_hi = indices
    return sorted_scores[:, k_lo - 1], sorted_scores[:, k_hi - 1]


def median_of_sorted(sorted_scores: torch.Tensor) -> torch.Tensor:
    """Sample median of ascending-sorted rows (B, n); the mean of the two middle
    values for even n (the usual definition, as ``numpy.median``)."""
    n = sorted_scores.shape[-1]
    if n % 2 == 1:
        return sorted_scores[:, n // 2]
    return 0.5 * (sorted_scores[:, n // 2 - 1] + sorted_scores[:, n // 2])


def median_intervals(
    samples: torch.Tensor, *, confidence: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample median and its distribution-free confidence interval, per row of ``samples`` (B, n).

    [X_(l), X_(n+1-l)] covers the population median with probability >= ``confidence``
    for any distribution (order statistics of Binomial(n, 1/2); see
    :func:`robustbench_iqa.order_statistics.median_ci_indices`).  Returns (median, low, high), each (B,).
    """
    srt = samples.sort(dim=-1).values
    lo, hi = median_ci_indices(int(srt.shape[-1]), confidence)
    return median_of_sorted(srt), srt[:, lo - 1], srt[:, hi - 1]


def quantile_check_indices(m: int, *, p_lo: float, p_hi: float, confidence: float) -> tuple[int, int] | None:
    """1-based indices (j_lo, j_hi) of fresh draws that bound the certified quantiles from the inside.

    With X'_(1) <= ... <= X'_(m) fresh draws at x, ``X'_(j_lo) >= q_{p_lo}`` and
    ``X'_(j_hi) <= q_{p_hi}`` each hold with probability >= ``confidence``: j_lo is the smallest j
    with P(Binomial(m, p_lo) <= j - 1) >= confidence, j_hi the largest j with
    P(Binomial(m, p_hi) >= j) >= confidence (the same binomial argument as the module docstring,
    on the other side).  An honest certificate's lower bound lies below q_{p_lo} (and its upper
    above q_{p_hi}) with probability >= 1 - (1 - alpha) / 2 each, so ``lower > X'_(j_lo)``
    or ``upper < X'_(j_hi)`` is evidence that the bounds are narrower than the theorem gives.
    None when m is too small.
    """
    m = check_n(m)
    c = float(confidence)
    if not 0.0 < c < 1.0:
        raise InputError(f"confidence must lie in (0, 1), got {confidence}")
    found = _indices(m, p_hi, p_lo, 1.0 - c)  # (k_lower for p_hi, k_upper for p_lo)
    if found is None:
        return None
    j_hi, j_lo = found
    return j_lo, j_hi
