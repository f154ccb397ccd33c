"""RS-Reg: randomized mean smoothing of a bounded regressor (Miri Rekavandi, Ohrimenko,
Rubinstein, TMLR 2025, "RS-Reg: Probabilistic and Robust Certified Regression
Through Randomized Smoothing").

The base function is h(z) = clip(f(clip(z, 0, 1)), a, b): the IQA model with
its output clipped to a known range [a, b] (``output_range``, default the
model's ``score_range``).  The clipping makes the boundedness assumption true
by construction, so the certificates below hold for h exactly as evaluated.
The defended score is the smoothed mean g(x) = E_e h(x + e), e ~ N(0, sigma^2 I),
estimated by the sample mean of n draws.

Two certificates (``certificate=``):

``"mean"`` (default, Guarantee.MEAN_BOUNDS).  For h with values in [a, b],
Phi^-1((g(x) - a) / (b - a)) is 1/sigma-Lipschitz in x (Salman et al. 2019,
Lemma 2; Kumar et al. 2020; RS-Reg's bounded-output result), hence for every
||x' - x||_2 <= eps:

    a + (b-a) Phi(Phi^-1(p_lo) - eps/sigma) <= g(x') <= a + (b-a) Phi(Phi^-1(p_hi) + eps/sigma),

where [p_lo, p_hi] contains (g(x) - a)/(b - a).  From n samples, Hoeffding's
inequality gives the two-sided interval mean +- (b - a) sqrt(ln(2/(1-alpha)) / (2n))
(the finite-sample "discounted" certificate, RS-Reg Prop. 1 in spirit).
Statement: with probability >= alpha over the n draws, the bound holds at every
x' of the ball.

``"probabilistic"`` (Guarantee.PROBABILISTIC, RS-Reg Thm. 1).  A statement on
the base model's output, not on g: if P_e(h(x+e) in V) >= p_A for an output
set V, then P_e(h(x'+e) in V) >= Phi(Phi^-1(p_A) - ||x'-x||_2/sigma) (Cohen et
al. 2019, Neyman-Pearson).  For a requested probability P (``p_valid``) at
radius eps we need p_A = Phi(Phi^-1(P) + eps/sigma); V = [lower, upper] is the
central interval between the tau- and (1-tau)-quantiles, tau = (1 - p_A)/2,
widened to order statistics with joint confidence alpha (binomial, as in
:mod:`robustbench_iqa.certify.bounds`).  Statement: with probability >= alpha over the draws,
for every x' in the ball, P_e(h(x'+e) in [lower, upper]) >= p_valid.

``"radius"`` and ``"mean-radius"`` (Guarantee.PROBABILISTIC_RADIUS): the certificates as
RS-Reg publishes them (:mod:`robustbench_iqa.certify.rs_reg_radius`): a *radius*
eps_x = sigma (Phi^-1(p_lower) - Phi^-1(P)) computed per image (the ``eps`` argument of
``certify`` is not used), within which the output stays within ``eps_y`` of the clean
output h(x) with probability >= P (``p_valid``, default 0.8 as in the reference code):
``"radius"`` for one noisy draw h(x'+e) (Thm. 1); ``"mean-radius"`` for the mean of
``n_smooth`` draws, outputs bounded in [a, b], draws within the inner band ``eta`` of h(x)
counting as inliers.  [lower, upper] = [h(x) - eps_y, h(x) + eps_y]; abstains when the
radius would be 0 (p_lower <= the required probability).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch
from scipy.stats import norm

from robustbench_iqa.certify import rs_reg_radius as radius_cert
from robustbench_iqa.certify.bounds import _indices
from robustbench_iqa.certify.defense import Estimate, Statistic, register_defense
from robustbench_iqa.certify.input_smoothing import InputSmoothedIQA
from robustbench_iqa.certify.result import AbstainReason, CertifiedScore, Guarantee
from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import IQAModel
from robustbench_iqa.registry import checked_keywords
from robustbench_iqa.validation import check_alpha, check_n, check_pair


class RSRegCertificate(StrEnum):
    """Which RS-Reg statement ``certify`` makes (see the module docstring)."""

    MEAN_BOUNDS = "mean-bounds"
    PROBABILISTIC = "probabilistic"
    RADIUS = "radius"
    MEAN_RADIUS = "mean-radius"

    @classmethod
    def _missing_(cls, value: object) -> RSRegCertificate | None:
        return cls.MEAN_BOUNDS if value == "mean" else None  # the former name of "mean-bounds"


def hoeffding_halfwidth(n: int, *, alpha: float, width: float) -> float:
    """t with P(|mean - g| >= t) <= 1 - alpha for n i.i.d. draws in an interval of length ``width``.

    Two-sided Hoeffding: P(|mean - g| >= t) <= 2 exp(-2 n t^2 / width^2).
    """
    return width * math.sqrt(math.log(2.0 / (1.0 - alpha)) / (2.0 * n))


def bounded_mean_certificate(
    p_lo: np.ndarray, p_hi: np.ndarray, *, eps: float, sigma: float
) -> tuple[np.ndarray, np.ndarray]:
    """Normalized bounds on g(x') / (b - a) over ||x'-x||_2 <= eps from p_lo <= g(x) <= p_hi (in [0, 1]).

    Phi(Phi^-1(p_lo) - eps/sigma) and Phi(Phi^-1(p_hi) + eps/sigma); p = 0 or 1 give 0 or 1.
    """
    r = eps / sigma
    lo = norm.cdf(norm.ppf(np.clip(p_lo, 0.0, 1.0)) - r)
    hi = norm.cdf(norm.ppf(np.clip(p_hi, 0.0, 1.0)) + r)
    return np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)


def check_output_range(output_range: tuple[float, float]) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in output_range)
    except (TypeError, ValueError):
        raise InputError(f"output_range must be a pair (a, b), got {output_range!r}") from None
    if not (math.isfinite(a) and math.isfinite(b) and a < b):
        raise InputError(f"output_range must be finite with a < b, got {output_range!r}")
    return a, b


class BoundedSmoothedIQA(InputSmoothedIQA):
    """Input smoothing of the IQA model with its output clipped to ``output_range`` = [a, b]."""

    def __init__(self, model: IQAModel, *, sigma: float, output_range: tuple[float, float] | None = None,
                 batch_size: int = 64, clip: bool = True, name: str | None = None) -> None:
        super().__init__(model, sigma=sigma, batch_size=batch_size, clip=clip, name=name)
        self.output_range = check_output_range(output_range if output_range is not None else model.score_range)

    def base_scores(self, z: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        a, b = self.output_range
        return super().base_scores(z, ref).clamp(a, b)

    def clean_and_noisy(self, x: torch.Tensor, ref: torch.Tensor | None, *, n: int,
                        generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """h(x) (B,) and n noisy outputs h(x + e) (B, n), both clipped; what the radius certificates need."""
        x, ref = check_pair(x, ref, full_reference=self.full_reference)
        with torch.no_grad():
            clean = self.base_scores(x, ref)
            v = self.noisy_scores(x, ref, n=n, generator=generator)
        if not bool(torch.isfinite(v).all() and torch.isfinite(clean).all()):
            raise InputError(f"{self.model.name} produced NaN or Inf scores")
        return clean, v


class MeanSmoothedIQA(BoundedSmoothedIQA):
    """RS-Reg: mean smoothing with the bounded-output certificates above."""

    defense_name = "rs-reg"
    statistic = Statistic.MEAN
    eot_aggregate = "mean"

    def __init__(self, model: IQAModel, *, sigma: float, certificate: RSRegCertificate | str = "mean-bounds",
                 p_valid: float | None = None, eps_y: float | None = None, n_smooth: int = 10,
                 eta: float | None = None, output_range: tuple[float, float] | None = None, batch_size: int = 64,
                 clip: bool = True, name: str | None = None) -> None:
        super().__init__(model, sigma=sigma, output_range=output_range, batch_size=batch_size, clip=clip, name=name)
        try:
            self.certificate = RSRegCertificate(certificate)
        except ValueError:
            raise InputError(
                f"certificate must be one of {[c.value for c in RSRegCertificate]}, got {certificate!r}"
            ) from None
        radius_kind = self.certificate in (RSRegCertificate.RADIUS, RSRegCertificate.MEAN_RADIUS)
        if p_valid is None:
            p_valid = radius_cert.DEFAULT_P if radius_kind else 0.5
        self.p_valid = radius_cert.check_probability(p_valid, "p_valid")
        self.radius_options = RadiusOptions.build(self.output_range, eps_y=eps_y, n_smooth=n_smooth, eta=eta)

    def aggregate(self, v: torch.Tensor) -> torch.Tensor:
        return v.mean(dim=1)

    def intervals(self, v: torch.Tensor, *, confidence: float) -> list[Estimate]:
        """Sample mean of the outputs clipped to [a, b], with Hoeffding's two-sided interval."""
        a, b = self.output_range
        n = v.shape[1]
        half = hoeffding_halfwidth(n, alpha=confidence, width=b - a)
        means = v.double().clamp(a, b).mean(dim=1)
        return [Estimate(float(m), float(m) - half, float(m) + half, n, confidence) for m in means]

    @checked_keywords
    def certify(
        self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int = 2000, alpha: float = 0.999,
        eps: float | None = None, generator: torch.Generator | None = None,
    ) -> list[CertifiedScore]:
        """As :meth:`InputSmoothedIQA.certify`; the radius certificates also need h(x) (one clean forward)
        and certify a radius of their own (``eps`` is not used by them)."""
        if self.certificate not in (RSRegCertificate.RADIUS, RSRegCertificate.MEAN_RADIUS):
            return super().certify(x, ref, n=n, alpha=alpha, eps=eps, generator=generator)
        n, alpha = check_n(n), check_alpha(alpha)
        clean, v = self.clean_and_noisy(x, ref, n=n, generator=generator)
        mean = v.double().mean(dim=1)
        if self.certificate is RSRegCertificate.RADIUS:
            return radius_certificates(self, clean, v, mean, alpha=alpha, p=self.p_valid, eps_y=self.radius_options.eps_y,
                                       required=lambda c: self.p_valid, band=self.radius_options.eps_y,
                                       what="one noisy draw h(x'+e) (RS-Reg Thm. 1)")
        opts = self.radius_options
        a, b = self.output_range

        def required(c: float) -> float | None:
            return radius_cert.bounded_mean_required_probability(
                n_smooth=opts.n_smooth, eps_y=opts.eps_y, eta=opts.eta, deviation=max(b - c, c - a), p=self.p_valid)

        return radius_certificates(self, clean, v, mean, alpha=alpha, p=self.p_valid, eps_y=opts.eps_y,
                                   required=required, band=opts.eta, what=f"the mean of {opts.n_smooth} noisy draws (RS-Reg, "
                                   f"outputs in [{a:g}, {b:g}], inner band eta={opts.eta:g})")

    def certify_scores(self, v: torch.Tensor, *, alpha: float, eps: float) -> list[CertifiedScore]:
        if self.certificate is RSRegCertificate.PROBABILISTIC:
            return self._certify_probabilistic(v, alpha=alpha, eps=eps)
        if self.certificate is not RSRegCertificate.MEAN_BOUNDS:
            raise InputError(f"certificate {self.certificate.value!r} needs the images: call certify()")
        n = v.shape[1]
        a, b = self.output_range
        mean = v.double().mean(dim=1).cpu().numpy()
        t = hoeffding_halfwidth(n, alpha=alpha, width=b - a)
        p_lo, p_hi = (mean - a - t) / (b - a), (mean - a + t) / (b - a)
        lo, hi = bounded_mean_certificate(p_lo, p_hi, eps=eps, sigma=self.sigma)
        statement = (
            f"With probability >= alpha over the n draws only (Hoeffding), for every x' with ||x'-x||_2 <= eps_x the "
            f"population smoothed mean E_e h(x'+e) lies in [lower, upper]; h = IQA model clipped to [{a:g}, {b:g}], "
            f"Phi^-1 of its normalized mean being 1/sigma-Lipschitz (RS-Reg bounded-output certificate). The "
            f"reported score is the sample mean, an estimate of E_e h(x+e)."
        )
        return [
            self._result(float(mean[i]), (a + (b - a) * float(lo[i]), a + (b - a) * float(hi[i])), n=n, alpha=alpha,
                         eps=eps, guarantee=Guarantee.MEAN_BOUNDS, statement=statement)
            for i in range(len(mean))
        ]

    def _certify_probabilistic(self, v: torch.Tensor, *, alpha: float, eps: float) -> list[CertifiedScore]:
        n = v.shape[1]
        idx = valid_interval_indices(n, p_valid=self.p_valid, eps=eps, sigma=self.sigma, alpha=alpha)
        srt = v.sort(dim=1).values
        mean = v.double().mean(dim=1)
        statement = (
            f"PROBABILISTIC (RS-Reg Thm. 1): with probability >= alpha over the n draws, for every x' with "
            f"||x'-x||_2 <= eps_x, P_e(h(x'+e) in [lower, upper]) >= {self.p_valid:g}, e ~ N(0, sigma^2 I). "
            f"A statement on the noisy base-model output, not a bound on the smoothed mean (the reported score)."
        )
        out = []
        for i in range(v.shape[0]):
            bounds = None if idx is None else (float(srt[i, idx[0] - 1]), float(srt[i, idx[1] - 1]))
            out.append(self._result(float(mean[i]), bounds, n=n, alpha=alpha, eps=eps,
                                    guarantee=Guarantee.PROBABILISTIC, statement=statement))
        return out


def valid_interval_indices(n: int, *, p_valid: float, eps: float, sigma: float, alpha: float) -> tuple[int, int] | None:
    """1-based order statistics (k1, k2) with P([X_(k1), X_(k2)] covers mass >= p_A) >= alpha.

    p_A = Phi(Phi^-1(p_valid) + eps/sigma); tau = (1 - p_A)/2.  k1 is the largest k with
    P(Bin(n, tau) >= k) >= 1 - a and k2 the smallest with P(Bin(n, 1 - tau) <= k - 1) >= 1 - a,
    a = (1 - alpha)/2; then X_(k1) <= q_tau and X_(k2) >= q_(1-tau) jointly with probability >= alpha.
    None when n is too small (or p_A rounds to 1).
    """
    p_a = float(norm.cdf(norm.ppf(p_valid) + eps / sigma))
    tau = (1.0 - p_a) / 2.0
    if tau <= 0.0:
        return None
    return _indices(int(n), tau, 1.0 - tau, (1.0 - alpha) / 2.0)


@dataclass(frozen=True)
class RadiusOptions:
    """Parameters of the published radius certificates: output tolerance, smoothing draws, inner band."""

    eps_y: float
    n_smooth: int
    eta: float

    @classmethod
    def build(cls, output_range: tuple[float, float], *, eps_y: float | None, n_smooth: int,
              eta: float | None) -> RadiusOptions:
        """Defaults: eps_y = 0.05 (b - a) (:data:`rs_reg_radius.DEFAULT_EPS_Y_FRACTION`), eta = eps_y / 2."""
        a, b = output_range
        eps_y = radius_cert.check_eps_y(radius_cert.DEFAULT_EPS_Y_FRACTION * (b - a) if eps_y is None else eps_y)
        if isinstance(n_smooth, bool) or not isinstance(n_smooth, int) or n_smooth < 1:
            raise InputError(f"n_smooth must be a positive integer, got {n_smooth!r}")
        eta = eps_y / 2 if eta is None else eta
        if not (isinstance(eta, (int, float)) and 0.0 < eta < eps_y):
            raise InputError(f"eta (the inner band) must lie in (0, eps_y={eps_y:g}), got {eta!r}")
        return cls(eps_y, n_smooth, float(eta))


def radius_certificates(
    defense: BoundedSmoothedIQA, clean: torch.Tensor, v: torch.Tensor, score: torch.Tensor, *, alpha: float,
    p: float, eps_y: float, required: Callable[[float], float | None], band: float, what: str,
) -> list[CertifiedScore]:
    """Published-radius results: per image, k = #draws with |v - h(x)| < ``band``, p_lower
    (Clopper-Pearson), the required per-draw probability ``required(h(x))`` and the radius
    (:mod:`robustbench_iqa.certify.rs_reg_radius`).  [lower, upper] = h(x) -+ ``eps_y``."""
    n = v.shape[1]
    statement = (
        f"PROBABILISTIC RADIUS (published certificate): with probability >= alpha over the n draws "
        f"(Clopper-Pearson), for every x' with ||x'-x||_2 <= eps_x, {what} at x' lies within eps_y={eps_y:g} of "
        f"the clean output h(x), i.e. in (lower, upper), with probability >= {p:g} over its noise. A probability "
        f"for the noisy output at x', not a bound on the reported score (the mean of the n draws)."
    )
    out = []
    for i in range(v.shape[0]):
        c = float(clean[i])
        k = int(((v[i].double() - c).abs() < band).sum())
        q = required(c)
        p_lo = radius_cert.clopper_pearson_lower(k, n, alpha=alpha)
        r = 0.0 if q is None else radius_cert.radius(p_lo, q, sigma=defense.sigma) if q > 0 else math.inf
        ok = r > 0  # an infinite radius: every output is within eps_y of h(x) whatever the input
        out.append(CertifiedScore(
            score=float(score[i]), lower=c - eps_y if ok else None, upper=c + eps_y if ok else None,
            eps_x=r if ok else None, abstained=not ok,
            reason=None if ok else AbstainReason.BOUND_NOT_INFORMATIVE, n=n, alpha=alpha, sigma=defense.sigma,
            defense=defense.defense_name, guarantee=Guarantee.PROBABILISTIC_RADIUS, statement=statement))
    return out


@register_defense("rs-reg", space="input", statistic="mean",
                  description="RS-Reg: mean of bounded scores under input noise (mean bounds, or the published radius)")
def create_rs_reg(model: IQAModel, *, sigma: float, certificate: str = "mean-bounds", p_valid: float | None = None,
                  eps_y: float | None = None, n_smooth: int = 10, eta: float | None = None,
                  output_range: tuple[float, float] | None = None, batch_size: int = 64,
                  clip: bool = True) -> MeanSmoothedIQA:
    """RS-Reg around ``model`` (no training needed)."""
    return MeanSmoothedIQA(model, sigma=sigma, certificate=certificate, p_valid=p_valid, eps_y=eps_y,
                           n_smooth=n_smooth, eta=eta, output_range=output_range, batch_size=batch_size, clip=clip)
