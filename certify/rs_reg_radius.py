"""The published RS-Reg certificate: a radius for a user-given output tolerance and probability.

Miri Rekavandi, Ohrimenko, Rubinstein, TMLR 2025, "RS-Reg: Probabilistic and Robust
Certified Regression Through Randomized Smoothing", Theorem 1, as computed in the
reference code (``dsacstar/test_certificate.py`` of arekavandi/Certified_Robust_Regression).
For a base regressor h, noise e ~ N(0, sigma^2 I), an output tolerance eps_y and a
required probability P ("user-defined probability of observing valid output"):

    valid set       V = {y : |y - h(x)| < eps_y}          (around the *clean* output h(x))
    p_A             = P_e(h(x + e) in V)
    radius          eps_x = sigma (Phi^-1(p_lower) - Phi^-1(P)),  p_lower <= p_A.

Statement: with probability >= alpha over the n estimation draws, for every
||dx||_2 <= eps_x, P_e(h(x + dx + e) in V) >= P.  Proof: for a fixed set V, the
function x' -> Phi^-1(P_e(h(x'+e) in V)) is 1/sigma-Lipschitz (Cohen et al. 2019,
Neyman-Pearson; Salman et al. 2019, Lemma 2), so
P_e(h(x+dx+e) in V) >= Phi(Phi^-1(p_A) - ||dx||/sigma) >= P when ||dx|| <= eps_x.
No radius (abstain) when p_lower <= P.

p_lower is the one-sided Clopper-Pearson lower bound at confidence alpha of p_A from
k successes in n draws: the p with P(Binomial(n, p) >= k) = 1 - alpha (0 for k = 0).
Differences from the reference code, all in the conservative direction:
the code solves ``1 - binom.cdf(k, n, p) = a/2``, i.e. P(Bin(n, p) >= k + 1) = a/2 (the
bound for one more success than observed), and replaces k = 0 by k = 1; here the
exact one-sided bound for k is used, and k = 0 gives p_lower = 0.  The code's ``alpha``
is an error level used as a/2 per tail (default 0.5); the suite's ``alpha`` is the
confidence (e.g. 0.999; :func:`robustbench_iqa.validation.check_alpha`).

The reference code's defaults: P = 0.8, eps_y = 5 (output units: metres of camera
position), n_tr = 200 estimation draws, sigma in {0.025, 0.05}.  IQA scores live in a
range of width 1 here, so the suite's default eps_y is 0.05 x the output range
(:data:`DEFAULT_EPS_Y_FRACTION`); P keeps the paper's 0.8.

:func:`bounded_mean_required_probability` is RS-Reg's finite-sample certificate for the
mean of n_s draws with outputs in [a, b] (the reference code's
``difference_between_cdfs``), made self-consistent: if every draw inside the inner band
|y - h(x)| < eta and at most k outside (at most max(b - h(x), h(x) - a) away), the mean
is within ((n_s - k) eta + k D) / n_s of h(x), which is < eps_y for k <= k* =
floor(n_s (eps_y - eta) / (D - eta)); so P(mean within eps_y) >= P(Bin(n_s, 1 - p) <= k*),
p the per-draw probability of the inner band.  (The code counts k* with ``ceil``, one
outlier too many, and estimates p for the band eps_y instead of eta.)
"""

from __future__ import annotations

import math

from scipy.stats import beta, norm

from robustbench_iqa.errors import InputError
from robustbench_iqa.validation import check_alpha, check_sigma

DEFAULT_P = 0.8
"""The reference code's default probability of a valid output (``--P``)."""
DEFAULT_EPS_Y_FRACTION = 0.05
"""Default output tolerance as a fraction of the output range (the paper's 5 is in metres)."""


def check_probability(p: float, name: str = "P") -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p < 1.0:
        raise InputError(f"{name} (a probability) must lie in (0, 1), got {p!r}")
    return float(p)


def check_eps_y(eps_y: float) -> float:
    if isinstance(eps_y, bool) or not isinstance(eps_y, (int, float)) or not (math.isfinite(eps_y) and eps_y > 0):
        raise InputError(f"eps_y (the output tolerance) must be a finite number > 0, got {eps_y!r}")
    return float(eps_y)


def clopper_pearson_lower(k: int, n: int, *, alpha: float) -> float:
    """One-sided lower confidence bound of a binomial proportion at confidence ``alpha``.

    The p with P(Binomial(n, p) >= k) = 1 - alpha, i.e. the (1 - alpha)-quantile of
    Beta(k, n - k + 1); 0 for k = 0.
    """
    alpha = check_alpha(alpha)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
        raise InputError(f"k must be an integer in [0, n], got {k!r}")
    if k == 0:
        return 0.0
    return float(beta.ppf(1.0 - alpha, k, n - k + 1))


def radius(p_lower: float, p_required: float, *, sigma: float) -> float:
    """eps_x = sigma (Phi^-1(p_lower) - Phi^-1(p_required)); 0 when p_lower <= p_required (no radius)."""
    sigma = check_sigma(sigma)
    p_required = check_probability(p_required, "p_required")
    if not 0.0 <= p_lower <= 1.0:
        raise InputError(f"p_lower must lie in [0, 1], got {p_lower!r}")
    if p_lower <= p_required:
        return 0.0
    if p_lower >= 1.0:
        return math.inf
    return sigma * float(norm.ppf(p_lower) - norm.ppf(p_required))


def base_radius(k: int, n: int, *, sigma: float, p: float = DEFAULT_P, alpha: float) -> float:
    """RS-Reg Thm. 1: the radius from k of n noisy draws inside the valid set V (module docstring)."""
    return radius(clopper_pearson_lower(k, n, alpha=alpha), check_probability(p), sigma=sigma)


def bounded_mean_required_probability(
    *, n_smooth: int, eps_y: float, eta: float, deviation: float, p: float = DEFAULT_P,
) -> float | None:
    """Smallest per-draw inner-band probability q with P(Bin(n_s, 1 - q) <= k*) >= P (module docstring).

    ``deviation`` D = max(b - h(x), h(x) - a): how far an outlier can be.  None when no
    outlier is allowed and even q = 1 is not enough (never: then q = P^(1/n_s)), or the
    inputs admit no certificate (eta >= eps_y).
    """
    p = check_probability(p)
    eps_y = check_eps_y(eps_y)
    if isinstance(n_smooth, bool) or not isinstance(n_smooth, int) or n_smooth < 1:
        raise InputError(f"n_smooth must be a positive integer, got {n_smooth!r}")
    if not 0.0 <= eta < eps_y:
        return None
    if deviation <= eps_y:  # every output is within eps_y of h(x): the mean is, whatever happens
        return 0.0
    k = math.floor(n_smooth * (eps_y - eta) / (deviation - eta))
    return required_probability(n_smooth=n_smooth, allowed=min(k, n_smooth), p=p)


def required_probability(*, n_smooth: int, allowed: int, p: float) -> float:
    """Smallest q with P(Binomial(n_s, 1 - q) <= allowed) >= P.

    P(Bin(n_s, 1 - q) <= k) = I_q(n_s - k, k + 1) (regularized incomplete beta), increasing in
    q, so q = Beta(n_s - k, k + 1).ppf(P); allowed >= n_s needs nothing (q = 0).
    """
    if allowed >= n_smooth:
        return 0.0
    if allowed < 0:
        raise InputError(f"allowed must be >= 0, got {allowed!r}")
    return float(beta.ppf(check_probability(p), n_smooth - allowed, allowed + 1))
