"""The published Cert-Reg certificate: a radius for the alpha-trimmed mean of n_s noisy draws.

Miri Rekavandi, Farokhi, Ohrimenko, Rubinstein, NeurIPS 2024, "Certified Adversarial
Robustness via Randomized alpha-Smoothing for Regression Models", as computed in the
reference code (``dsacstar/test_certificate.py`` of arekavandi/Certified_adv_RRegression).
The smoothed regressor is the beta-trimmed mean of n_s draws h(x + e_1..n_s) (the paper's
alpha = ``trim`` here: k = floor(trim n_s) values removed at each end, as
``scipy.stats.trim_mean`` does).

*Binomial condition.*  If at most k of the n_s draws fall outside the valid set
V = {y : |y - h(x)| < eps_y}, the trimmed mean lies in V: the draws above V are among the
k largest and those below among the k smallest, so all are trimmed, and the mean of the
remaining values (all in the interval V) is in V.  With q the per-draw probability of V,

    P(trimmed mean in V) >= P(Binomial(n_s, 1 - q) <= k) = I_q(n_s - k, k + 1),

which is >= P exactly when q >= q_P = Beta(n_s - k, k + 1).ppf(P)
(:func:`~robustbench_iqa.certify.rs_reg_radius.required_probability`).

*Radius.*  p_lower (one-sided Clopper-Pearson at confidence alpha, from the n estimation
draws) bounds q at x; at x + dx the per-draw probability is at least
Phi(Phi^-1(p_lower) - ||dx||/sigma) (Neyman-Pearson), so

    eps_x = sigma (Phi^-1(p_lower) - Phi^-1(q_P)).

Statement: with probability >= alpha over the n estimation draws, for every
||dx||_2 <= eps_x, the trimmed mean of n_s fresh draws at x + dx lies in
(h(x) - eps_y, h(x) + eps_y) with probability >= P over those draws.

Differences from the reference code (conservative here): it counts the allowed
outliers as ``round(alpha n_s)`` while ``trim_mean`` removes ``floor(alpha n_s)`` (e.g.
n_s = 10, alpha = 0.35: 4 allowed, 3 trimmed), and it uses the Clopper-Pearson variant
described in :mod:`robustbench_iqa.certify.rs_reg_radius`.  Reference defaults:
alpha (trim) = 0.35, n_s = 10, P = 0.9, eps_y = 5 (metres), n_tr = 100 estimation
draws, confidence 1 - 0.5/2 (their ``beta`` = 0.5 used as a two-sided error).
"""

from __future__ import annotations

import math

from robustbench_iqa.certify.rs_reg_radius import (
    check_probability,
    clopper_pearson_lower,
    radius,
    required_probability,
)
from robustbench_iqa.errors import InputError

DEFAULT_P = 0.9
"""The reference code's default probability of a valid output (``--P``)."""
DEFAULT_N_SMOOTH = 10
"""The reference code's number of draws of the smoothed value (``--n_sample``)."""


def trimmed_count(n_smooth: int, trim: float) -> int:
    """k = floor(trim n_s), the number of values removed at each end (as ``scipy.stats.trim_mean``)."""
    if isinstance(n_smooth, bool) or not isinstance(n_smooth, int) or n_smooth < 1:
        raise InputError(f"n_smooth must be a positive integer, got {n_smooth!r}")
    if not 0.0 <= trim < 0.5:
        raise InputError(f"trim must lie in [0, 0.5), got {trim!r}")
    return math.floor(trim * n_smooth)


def trimmed_mean_required_probability(*, n_smooth: int, trim: float, p: float = DEFAULT_P) -> float:
    """q_P: the smallest per-draw probability of V with P(Bin(n_s, 1 - q) <= k) >= P (module docstring)."""
    return required_probability(n_smooth=n_smooth, allowed=trimmed_count(n_smooth, trim), p=check_probability(p))


def trimmed_mean_radius(k: int, n: int, *, sigma: float, trim: float, n_smooth: int = DEFAULT_N_SMOOTH,
                        p: float = DEFAULT_P, alpha: float) -> float:
    """eps_x from k of n estimation draws inside V (module docstring); 0 when there is none."""
    q = trimmed_mean_required_probability(n_smooth=n_smooth, trim=trim, p=p)
    return radius(clopper_pearson_lower(k, n, alpha=alpha), q, sigma=sigma)
