"""RS-Reg and Cert-Reg radius certificates as published, against independent derivations.

References: the reference code's formulas re-derived with scipy root finding
(``brentq`` on binomial CDFs, as ``dsacstar/test_certificate.py`` computes them),
statsmodels' Clopper-Pearson interval, closed forms on toy regressors whose noisy
output distribution is known (a half-space indicator, for which the Neyman-Pearson
radius is exact; an affine map), and brute-force Monte Carlo of the smoothed outputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.stats import binom, norm, trim_mean
from statsmodels.stats.proportion import proportion_confint

from robustbench_iqa.certify.cert_reg_radius import (
    trimmed_count,
    trimmed_mean_radius,
    trimmed_mean_required_probability,
)
from robustbench_iqa.certify.defense import create_defense
from robustbench_iqa.certify.result import AbstainReason, Guarantee
from robustbench_iqa.certify.rs_reg import MeanSmoothedIQA, RSRegCertificate
from robustbench_iqa.certify.rs_reg_radius import (
    base_radius,
    bounded_mean_required_probability,
    clopper_pearson_lower,
    radius,
    required_probability,
)
from robustbench_iqa.errors import InputError
from tests.test_input_defenses import H, HalfSpace, Linear, W
from tests.toy_models import ToyNR, random_images


# ------------------------------------------------------------------- pure formulas
@pytest.mark.parametrize("k,n,conf", [(1, 10, 0.9), (150, 200, 0.999), (199, 200, 0.99), (57, 100, 0.5)])
def test_clopper_pearson_lower_matches_statsmodels_and_the_binomial_root(k: int, n: int, conf: float) -> None:
    ours = clopper_pearson_lower(k, n, alpha=conf)
    lo, _ = proportion_confint(k, n, alpha=2 * (1 - conf), method="beta")
    assert ours == pytest.approx(lo, rel=1e-9)
    root = brentq(lambda p: 1 - binom.cdf(k - 1, n, p) - (1 - conf), 1e-12, 1 - 1e-12, xtol=1e-15)
    assert ours == pytest.approx(root, rel=1e-7)
    # The reference code's root, P(Bin(n, p) >= k + 1) = error, is larger: one success too many.
    ref_code = brentq(lambda p: 1 - binom.cdf(k, n, p) - (1 - conf), 1e-12, 1 - 1e-12) if k < n else 1.0
    assert ref_code > ours
    assert clopper_pearson_lower(0, n, alpha=conf) == 0.0


def test_radius_closed_form_and_abstention() -> None:
    assert radius(0.99, 0.8, sigma=0.25) == pytest.approx(0.25 * (norm.ppf(0.99) - norm.ppf(0.8)))
    assert radius(0.8, 0.8, sigma=0.25) == 0.0 and radius(0.5, 0.8, sigma=0.25) == 0.0
    assert radius(1.0, 0.8, sigma=0.25) == math.inf
    assert base_radius(200, 200, sigma=0.1, p=0.8, alpha=0.99) == pytest.approx(
        0.1 * (norm.ppf(0.01 ** (1 / 200)) - norm.ppf(0.8)))  # k = n: p_lower = (1 - conf)^(1/n)
    with pytest.raises(InputError, match="alpha"):
        base_radius(5, 10, sigma=0.1, alpha=0.01)


@pytest.mark.parametrize("n_s,allowed,p", [(10, 0, 0.9), (10, 3, 0.9), (25, 5, 0.8), (7, 2, 0.99)])
def test_required_probability_is_the_root_of_the_binomial_condition(n_s: int, allowed: int, p: float) -> None:
    q = required_probability(n_smooth=n_s, allowed=allowed, p=p)
    root = brentq(lambda t: binom.cdf(allowed, n_s, 1 - t) - p, 1e-12, 1 - 1e-12, xtol=1e-15)
    assert q == pytest.approx(root, rel=1e-8)
    assert binom.cdf(allowed, n_s, 1 - q) == pytest.approx(p, rel=1e-8)
    if allowed == 0:
        assert q == pytest.approx(p ** (1 / n_s))


def test_cert_reg_counts_what_trim_mean_removes() -> None:
    for n_s, trim in ((10, 0.35), (10, 0.1), (9, 0.25), (100, 0.349)):
        k = trimmed_count(n_s, trim)
        v = np.arange(n_s, dtype=float)
        assert trim_mean(v, trim) == pytest.approx(v[k : n_s - k].mean())
    # The reference code allows round(0.35 * 10) = 4 outliers, but only 3 are trimmed.
    assert trimmed_count(10, 0.35) == 3 and round(0.35 * 10) == 4


def _trimmed_mean_valid_rate(q: float, *, n_s: int, trim: float, reps: int, seed: int) -> float:
    """Monte Carlo P(trimmed mean in V = (-1, 1)) with draws in V w.p. q, worst-case outliers (all at +10)."""
    rng = np.random.default_rng(seed)
    inside = rng.random((reps, n_s)) < q
    draws = np.where(inside, rng.uniform(-0.999, 0.999, (reps, n_s)), 10.0)
    return float((np.abs(trim_mean(draws, trim, axis=1)) < 1).mean())


def test_trimmed_mean_binomial_condition_by_monte_carlo() -> None:
    n_s, trim, p = 10, 0.35, 0.9
    q = trimmed_mean_required_probability(n_smooth=n_s, trim=trim, p=p)
    reps = 200_000
    rate = _trimmed_mean_valid_rate(q, n_s=n_s, trim=trim, reps=reps, seed=0)
    assert rate >= p - 4 * math.sqrt(p * (1 - p) / reps)  # the certificate's promise holds
    # The reference code's q (round(alpha n_s) = 4 allowed) breaks it against worst-case outliers.
    q_ref = brentq(lambda t: binom.cdf(round(trim * n_s), n_s, 1 - t) - p, 1e-9, 1 - 1e-9)
    rate_ref = _trimmed_mean_valid_rate(q_ref, n_s=n_s, trim=trim, reps=reps, seed=1)
    assert rate_ref < p - 4 * math.sqrt(p * (1 - p) / reps)


def test_bounded_mean_condition_by_monte_carlo() -> None:
    """RS-Reg's mean of n_s draws: inliers at the worst point of the inner band, outliers at the range end."""
    n_s, eps_y, eta, dev, p = 10, 0.1, 0.05, 0.6, 0.8
    q = bounded_mean_required_probability(n_smooth=n_s, eps_y=eps_y, eta=eta, deviation=dev, p=p)
    k = math.floor(n_s * (eps_y - eta) / (dev - eta))
    assert q == pytest.approx(brentq(lambda t: binom.cdf(k, n_s, 1 - t) - p, 1e-9, 1 - 1e-9), rel=1e-7)
    rng = np.random.default_rng(0)
    reps = 200_000
    inside = rng.random((reps, n_s)) < q
    mean = np.where(inside, eta * (1 - 1e-12), dev).mean(axis=1)
    rate = float((mean <= eps_y).mean())
    assert rate >= p - 4 * math.sqrt(p * (1 - p) / reps)
    assert bounded_mean_required_probability(n_smooth=n_s, eps_y=eps_y, eta=eps_y, deviation=dev) is None
    assert bounded_mean_required_probability(n_smooth=n_s, eps_y=eps_y, eta=eta, deviation=0.05) == 0.0


# ------------------------------------------------------------------- the defenses
def _batch(r: int, seed: int = 0) -> torch.Tensor:
    return random_images(1, H, W, seed=seed).expand(r, -1, -1, -1).contiguous()


def test_rs_reg_radius_is_never_above_the_exact_radius_of_a_half_space() -> None:
    """HalfSpace: P(h(x'+e) = h(x)) = Phi(margin(x')/(sigma ||w||)), so the Neyman-Pearson radius with
    the true p_A is exact; the certified radius exceeds it only when p_lower > p_A (rate <= 1 - conf)."""
    sigma, n, conf, p, reps = 0.5, 1000, 0.9, 0.8, 200
    model = HalfSpace(c=1.5)
    rs = MeanSmoothedIQA(model, sigma=sigma, certificate="radius", p_valid=p, eps_y=0.5, clip=False)
    x = _batch(reps)
    margin = abs(float(model.margin(x[:1])))  # the distance to the boundary, times ||w||
    p_a = norm.cdf(margin / (sigma * model.wnorm))
    exact = sigma * (norm.ppf(p_a) - norm.ppf(p))
    res = rs.certify(x, n=n, alpha=conf, generator=torch.Generator().manual_seed(0))
    assert all(r.guarantee is Guarantee.PROBABILISTIC_RADIUS for r in res)
    radii = np.array([0.0 if r.abstained else r.eps_x for r in res])
    misses = int((radii > exact).sum())
    assert misses <= binom.ppf(0.9999, reps, 1 - conf)
    assert exact > 0.3 and np.median(radii) > 0.8 * exact  # and it is not vacuous
    # Where the radius is within the exact one, the true probability at the worst point is >= P.
    r0 = float(np.median(radii))
    assert r0 <= exact and norm.cdf((margin - model.wnorm * r0) / (sigma * model.wnorm)) >= p


def test_rs_reg_radius_on_an_affine_regressor_holds_in_the_worst_direction() -> None:
    """Linear: h(x'+e) - h(x) ~ N(w.dx, sigma^2 ||w||^2); the valid probability at x - r w/||w|| is a closed form."""
    sigma, n, conf, p, eps_y = 0.25, 500, 0.99, 0.8, 0.3
    model = Linear(scale=0.5)
    rs = MeanSmoothedIQA(model, sigma=sigma, certificate="radius", p_valid=p, eps_y=eps_y, output_range=(-5, 5),
                         clip=False)
    res = rs.certify(_batch(20, seed=1), n=n, alpha=conf, generator=torch.Generator().manual_seed(1))
    s = sigma * model.wnorm
    for r in res:
        assert not r.abstained
        shift = model.wnorm * r.eps_x  # |w . dx| at worst
        true_p = norm.cdf((eps_y - shift) / s) - norm.cdf((-eps_y - shift) / s)
        assert true_p >= p
        assert r.upper - r.lower == pytest.approx(2 * eps_y)


def test_cert_reg_radius_against_monte_carlo_at_the_radius() -> None:
    sigma, n, conf, p, eps_y, trim, n_s = 0.25, 1000, 0.99, 0.9, 0.4, 0.2, 10
    model = Linear(scale=0.5)
    cr = create_defense("cert-reg", model, sigma=sigma, trim=trim, certificate="radius", p_valid=p, eps_y=eps_y,
                        n_smooth=n_s, output_range=(-5, 5), clip=False)
    x = _batch(4, seed=2)
    res = cr.certify(x, n=n, alpha=conf, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(3)
    for i, r in enumerate(res):
        assert r.guarantee is Guarantee.PROBABILISTIC_RADIUS and not r.abstained
        clean = float(model(x[i : i + 1]))
        xw = x[i : i + 1] - r.eps_x * model.w.reshape(1, 3, H, W) / model.wnorm  # the worst direction
        e = torch.randn(20_000 * n_s, 3, H, W, generator=g) * sigma  # the defense's draws, without its [0, 1] check
        v = model(xw + e).reshape(20_000, n_s).double().numpy()
        rate = float((np.abs(trim_mean(v, trim, axis=1) - clean) < eps_y).mean())
        assert rate >= p - 4 * math.sqrt(p * (1 - p) / 20_000)
    assert trimmed_mean_radius(n, n, sigma=sigma, trim=trim, n_smooth=n_s, p=p, alpha=conf) >= res[0].eps_x


def test_certificate_names_and_defaults() -> None:
    model = ToyNR()
    assert MeanSmoothedIQA(model, sigma=0.1).certificate is RSRegCertificate.MEAN_BOUNDS
    assert MeanSmoothedIQA(model, sigma=0.1, certificate="mean").certificate is RSRegCertificate.MEAN_BOUNDS
    rs = MeanSmoothedIQA(model, sigma=0.1, certificate="radius")
    assert rs.p_valid == 0.8 and rs.radius_options.eps_y == pytest.approx(0.05)
    assert MeanSmoothedIQA(model, sigma=0.1, certificate="probabilistic").p_valid == 0.5
    with pytest.raises(InputError, match="mean-radius"):
        MeanSmoothedIQA(model, sigma=0.1, certificate="published")
    cr = create_defense("cert-reg", model, sigma=0.1, certificate="radius")
    assert cr.p_valid == 0.9 and cr.radius_options.n_smooth == 10
    with pytest.raises(InputError, match="trimmed-mean-bounds"):
        create_defense("cert-reg", model, sigma=0.1, certificate="mean")


@pytest.mark.parametrize("name,cert", [("rs-reg", "radius"), ("rs-reg", "mean-radius"), ("cert-reg", "radius")])
def test_radius_certificates_on_a_tiny_model(name: str, cert: str) -> None:
    d = create_defense(name, ToyNR(), sigma=0.05, certificate=cert, eps_y=0.2)
    x = random_images(3, 16, 16, seed=4)
    res = d.certify(x, n=300, alpha=0.99, generator=torch.Generator().manual_seed(0))
    for r in res:
        assert r.guarantee is Guarantee.PROBABILISTIC_RADIUS and "PROBABILISTIC RADIUS" in r.statement
        if r.abstained:
            assert r.reason is AbstainReason.BOUND_NOT_INFORMATIVE and r.eps_x is None
        else:
            assert r.eps_x > 0 and r.upper - r.lower == pytest.approx(0.4)
