"""Cert-Reg: randomized alpha-trimmed-mean smoothing of a bounded regressor (Miri Rekavandi
et al., NeurIPS 2024, "Certified Adversarial Robustness via Randomized alpha-Smoothing
for Regression Models").

Base function h(z) = clip(f(clip(z, 0, 1)), a, b) as in :mod:`robustbench_iqa.certify.rs_reg`.
The defended score is the beta-trimmed mean of the n noisy scores: sort them
and average all but the lowest and highest floor(beta * n) (``trim`` = beta,
the paper's alpha; ``alpha`` in this suite is the confidence level).  It
estimates the population trimmed mean

    T(x) = 1/(1 - 2 beta) * integral_beta^(1-beta) Q_x(t) dt,

Q_x the quantile function of h(x + e), e ~ N(0, sigma^2 I).  beta = 0 is mean
smoothing; beta -> 1/2 approaches median smoothing.

Certificate implemented here (Guarantee.MEAN_BOUNDS), derived from the same
Neyman-Pearson argument as median smoothing (Chiang et al. 2020, Thm. 1) and
applied at every level t: for ||x' - x||_2 <= eps, r = eps/sigma,

    Q_x(Phi(Phi^-1(t) - r)) <= Q_x'(t) <= Q_x(Phi(Phi^-1(t) + r)).

Q_x is replaced by the empirical quantile function, widened uniformly by the
Dvoretzky-Kiefer-Wolfowitz inequality with Massart's constant,
P(sup |F_n - F| > gamma) <= 2 exp(-2 n gamma^2), gamma = sqrt(ln(2/(1-alpha)) / (2n)):
Q_x(s) >= Q_n(s - gamma) and Q_x(s) <= Q_n(s + gamma), with Q_n(u) = a for
u <= 0 and b for u > 1 (the bounded-output assumption, made true by the
clipping).  Integrating over t in [beta, 1 - beta] with a left (lower) or right
(upper) Riemann sum of the monotone integrand keeps both bounds conservative.
Statement: with probability >= alpha over the n draws, T(x') lies in
[lower, upper] for every x' of the ball.  This is a sound certificate for the
trimmed-mean smoothed regressor; its constants may differ from the paper's.
It is ``certificate="trimmed-mean-bounds"`` (the default).

``certificate="radius"`` (Guarantee.PROBABILISTIC_RADIUS) is the certificate as Cert-Reg
publishes it (:mod:`robustbench_iqa.certify.cert_reg_radius`): per image a radius
eps_x = sigma (Phi^-1(p_lower) - Phi^-1(q_P)), q_P from the binomial condition of the
trimmed mean of ``n_smooth`` draws (default 10, as the reference code), within which
that trimmed mean stays within ``eps_y`` of the clean output h(x) with probability
>= P (``p_valid``, default 0.9 as the reference code).  The ``eps`` argument of
``certify`` is not used; [lower, upper] = [h(x) - eps_y, h(x) + eps_y].
"""

from __future__ import annotations

import math
from enum import StrEnum

import torch
from scipy.stats import norm

from robustbench_iqa.certify.cert_reg_radius import (
    DEFAULT_N_SMOOTH,
    DEFAULT_P,
    trimmed_mean_required_probability,
)
from robustbench_iqa.certify.defense import Estimate, Statistic, register_defense
from robustbench_iqa.certify.result import CertifiedScore, Guarantee
from robustbench_iqa.certify.rs_reg import BoundedSmoothedIQA, RadiusOptions, radius_certificates
from robustbench_iqa.certify.rs_reg_radius import check_probability
from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import IQAModel
from robustbench_iqa.registry import checked_keywords
from robustbench_iqa.validation import check_alpha, check_n


class CertRegCertificate(StrEnum):
    """Which Cert-Reg statement ``certify`` makes (see the module docstring)."""

    TRIMMED_MEAN_BOUNDS = "trimmed-mean-bounds"
    RADIUS = "radius"


def check_trim(trim: float) -> float:
    if not (isinstance(trim, (int, float)) and 0.0 <= trim < 0.5):
        raise InputError(f"trim (the fraction removed at each end) must lie in [0, 0.5), got {trim!r}")
    return float(trim)


def trimmed_mean(v: torch.Tensor, trim: float) -> torch.Tensor:
    """Rows (B, n) -> mean of each sorted row without its floor(trim * n) lowest and highest values."""
    n = v.shape[-1]
    k = math.floor(check_trim(trim) * n)
    if n - 2 * k < 1:
        raise InputError(f"trim={trim} removes all n={n} samples")
    return v.sort(dim=-1).values[..., k : n - k].mean(dim=-1)


def dkw_halfwidth(n: int, *, alpha: float) -> float:
    """gamma with P(sup_y |F_n(y) - F(y)| > gamma) <= 1 - alpha (DKW, Massart 1990)."""
    return math.sqrt(math.log(2.0 / (1.0 - alpha)) / (2.0 * n))


def trimmed_mean_bounds(
    sorted_scores: torch.Tensor, *, trim: float, eps: float, sigma: float, alpha: float,
    output_range: tuple[float, float], grid: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Certified (lower (B,), upper (B,)) of the population trimmed mean over ||x'-x||_2 <= eps.

    ``sorted_scores``: ascending rows (B, n) with values in ``output_range``.
    """
    trim = check_trim(trim)
    a, b = output_range
    srt = sorted_scores.double()
    bsz, n = srt.shape
    gamma, r = dkw_halfwidth(n, alpha=alpha), eps / sigma
    width = (1.0 - 2.0 * trim) / grid
    left = trim + width * torch.arange(grid, dtype=torch.float64)
    right = left + width

    def emp_quantile(u: torch.Tensor) -> torch.Tensor:
        # Q_n(u) = X_(ceil(n u)) for u in (0, 1]; a below, b above.
        k = torch.ceil(u * n - 1e-9).clamp(1, n).long() - 1
        q = srt[:, k]
        q = torch.where(u[None, :] <= 0.0, torch.full_like(q, a), q)
        return torch.where(u[None, :] > 1.0, torch.full_like(q, b), q)

    s_lo = torch.from_numpy(norm.cdf(norm.ppf(left.numpy()) - r)) - gamma
    s_hi = torch.from_numpy(norm.cdf(norm.ppf(right.numpy()) + r)) + gamma
    lower = emp_quantile(s_lo).mean(dim=1)
    upper = emp_quantile(s_hi).mean(dim=1)
    return lower.to(sorted_scores.dtype), upper.to(sorted_scores.dtype)


class TrimmedMeanSmoothedIQA(BoundedSmoothedIQA):
    """Cert-Reg: alpha-trimmed-mean smoothing with the DKW quantile certificate above."""

    defense_name = "cert-reg"
    statistic = Statistic.TRIMMED_MEAN
    eot_aggregate = "mean"

    def __init__(self, model: IQAModel, *, sigma: float, trim: float = 0.1,
                 certificate: CertRegCertificate | str = "trimmed-mean-bounds", p_valid: float = DEFAULT_P,
                 eps_y: float | None = None, n_smooth: int = DEFAULT_N_SMOOTH,
                 output_range: tuple[float, float] | None = None, batch_size: int = 64, clip: bool = True,
                 grid: int = 4096, name: str | None = None) -> None:
        super().__init__(model, sigma=sigma, output_range=output_range, batch_size=batch_size, clip=clip, name=name)
        self.trim = check_trim(trim)
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
            raise InputError(f"grid must be a positive integer, got {grid!r}")
        self.grid = grid
        try:
            self.certificate = CertRegCertificate(certificate)
        except ValueError:
            raise InputError(
                f"certificate must be one of {[c.value for c in CertRegCertificate]}, got {certificate!r}"
            ) from None
        self.p_valid = check_probability(p_valid, "p_valid")
        self.radius_options = RadiusOptions.build(self.output_range, eps_y=eps_y, n_smooth=n_smooth, eta=None)

    @checked_keywords
    def certify(
        self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int = 2000, alpha: float = 0.999,
        eps: float | None = None, generator: torch.Generator | None = None,
    ) -> list[CertifiedScore]:
        """As :meth:`InputSmoothedIQA.certify`; the radius certificate also needs h(x) (one clean forward)
        and certifies a radius of its own (``eps`` is not used by it)."""
        if self.certificate is CertRegCertificate.TRIMMED_MEAN_BOUNDS:
            return super().certify(x, ref, n=n, alpha=alpha, eps=eps, generator=generator)
        n, alpha = check_n(n), check_alpha(alpha)
        clean, v = self.clean_and_noisy(x, ref, n=n, generator=generator)
        opts = self.radius_options
        q = trimmed_mean_required_probability(n_smooth=opts.n_smooth, trim=self.trim, p=self.p_valid)
        return radius_certificates(
            self, clean, v, trimmed_mean(v, self.trim), alpha=alpha, p=self.p_valid, eps_y=opts.eps_y,
            required=lambda c: q,
            band=opts.eps_y, what=f"the {self.trim:g}-trimmed mean of {opts.n_smooth} noisy draws (Cert-Reg)")

    def aggregate(self, v: torch.Tensor) -> torch.Tensor:
        return trimmed_mean(v, self.trim)

    def intervals(self, v: torch.Tensor, *, confidence: float) -> list[Estimate]:
        """Sample trimmed mean with the DKW interval of the population trimmed mean (its own bound at eps = 0)."""
        n = v.shape[1]
        lo, hi = trimmed_mean_bounds(v.sort(dim=1).values, trim=self.trim, eps=0.0, sigma=self.sigma,
                                     alpha=confidence, output_range=self.output_range, grid=self.grid)
        point = trimmed_mean(v.double().clamp(*self.output_range), self.trim)
        return [Estimate(float(p), float(a), float(b), n, confidence) for p, a, b in zip(point, lo, hi)]

    def certify_scores(self, v: torch.Tensor, *, alpha: float, eps: float) -> list[CertifiedScore]:
        if self.certificate is not CertRegCertificate.TRIMMED_MEAN_BOUNDS:
            raise InputError(f"certificate {self.certificate.value!r} needs the images: call certify()")
        n = v.shape[1]
        score = trimmed_mean(v, self.trim)
        lo, hi = trimmed_mean_bounds(v.sort(dim=1).values, trim=self.trim, eps=eps, sigma=self.sigma, alpha=alpha,
                                     output_range=self.output_range, grid=self.grid)
        a, b = self.output_range
        statement = (
            f"With probability >= alpha over the n draws only (DKW), for every x' with ||x'-x||_2 <= eps_x the "
            f"population {self.trim:g}-trimmed mean of h(x'+e), e ~ N(0, sigma^2 I), lies in [lower, upper]; h = IQA "
            f"model clipped to [{a:g}, {b:g}] (Cert-Reg setting; quantile-shift bound of Chiang et al. 2020 at every "
            f"level). The reported score is the sample trimmed mean, an estimate of the population one at x."
        )
        return [
            self._result(float(score[i]), (float(lo[i]), float(hi[i])), n=n, alpha=alpha, eps=eps,
                         guarantee=Guarantee.MEAN_BOUNDS, statement=statement)
            for i in range(v.shape[0])
        ]


@register_defense("cert-reg", space="input", statistic="trimmed-mean",
                  description="Cert-Reg: alpha-trimmed mean of bounded scores under input noise "
                              "(trimmed-mean bounds, or the published radius)")
def create_cert_reg(model: IQAModel, *, sigma: float, trim: float = 0.1, certificate: str = "trimmed-mean-bounds",
                    p_valid: float = DEFAULT_P, eps_y: float | None = None, n_smooth: int = DEFAULT_N_SMOOTH,
                    output_range: tuple[float, float] | None = None, batch_size: int = 64,
                    clip: bool = True) -> TrimmedMeanSmoothedIQA:
    """Cert-Reg around ``model`` (no training needed)."""
    return TrimmedMeanSmoothedIQA(model, sigma=sigma, trim=trim, certificate=certificate, p_valid=p_valid,
                                  eps_y=eps_y, n_smooth=n_smooth, output_range=output_range,
                                  batch_size=batch_size, clip=clip)
