"""Input-space defenses (MS, DMS, DMS-IQA, RS-Reg, Cert-Reg) against closed forms and Monte Carlo.

Toy regressors on R^d (noise clipping off) make the noisy output exactly
known: f(x) = w.x + c gives N(w.x + c, sigma^2 ||w||^2), so its median,
percentiles and (trimmed) mean are closed forms; the half-space indicator
has smoothed mean Phi((w.x + c) / (sigma ||w||)), for which the bounded-output
mean certificate is tight; the probit Phi(w.x + c) has smoothed mean
Phi((w.x + c) / sqrt(1 + sigma^2 ||w||^2)).  The worst point of the eps-ball
is x -/+ eps w/||w||.  Coverage tests certify R independent copies of one
image in one batch and compare the violation count with the nominal error
rate under a binomial tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import binom, norm, trim_mean

from robustbench_iqa.certify.bounds import order_statistic_indices
from robustbench_iqa.certify.cert_reg import (
    TrimmedMeanSmoothedIQA,
    dkw_halfwidth,
    trimmed_mean,
    trimmed_mean_bounds,
)
from robustbench_iqa.certify.defense import create_defense
from robustbench_iqa.certify.denoiser import DnCNN
from robustbench_iqa.certify.input_smoothing import MedianSmoothedIQA
from robustbench_iqa.certify.result import AbstainReason, Guarantee
from robustbench_iqa.certify.rs_reg import (
    MeanSmoothedIQA,
    bounded_mean_certificate,
    hoeffding_halfwidth,
    valid_interval_indices,
)
from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import IQAModel, Mode
from tests.toy_models import ToyFR, ToyNR, random_images

H = W = 4  # d = 48: the toys are exact, size does not matter


class _Affine(IQAModel):
    """Base of the closed-form toys: m(x) = w.x + c with a fixed direction w."""

    mode = Mode.NR

    def __init__(self, *, scale: float = 1.0, c: float = 0.0, score_range: tuple[float, float] = (0.0, 1.0)) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        w = torch.randn(3 * H * W, generator=g, dtype=torch.float64)
        self.register_buffer("w", (w / w.norm() * scale).float())
        self.c = c
        self.score_range = score_range

    @property
    def wnorm(self) -> float:
        return float(self.w.double().norm())

    def margin(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w + self.c


class Linear(_Affine):
    name = "linear"

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return self.margin(x)


class HalfSpace(_Affine):
    name = "halfspace"

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        a, b = self.score_range
        return a + (b - a) * (self.margin(x) >= 0).to(x.dtype)


class Probit(_Affine):
    name = "probit"

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return torch.special.ndtr(self.margin(x))


def _copies(r: int, seed: int = 0) -> torch.Tensor:
    return random_images(1, H, W, seed=seed).expand(r, -1, -1, -1).contiguous()


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _tolerance(r: int, rate: float) -> int:
    """Violation count exceeded with probability < 1e-4 when the true rate is ``rate``."""
    return int(binom.ppf(1 - 1e-4, r, rate))


# ----------------------------------------------------------------------- MS
def test_ms_median_and_bounds_match_gaussian_closed_form() -> None:
    sigma, eps, n = 0.5, 0.25, 20001
    model = Linear(scale=2.0, c=0.3)
    x = _copies(1)
    ms = MedianSmoothedIQA(model, sigma=sigma, clip=False, batch_size=25000)
    res = ms.certify(x, n=n, alpha=0.99, eps=eps, generator=_gen())[0]
    mu, s = float(model.margin(x)), sigma * model.wnorm
    se = s * math.sqrt(math.pi / 2 / n)
    assert abs(res.score - mu) < 5 * se
    # Percentiles Phi(-/+eps/sigma) of N(mu, s^2) are mu -/+ eps ||w|| (the worst-case medians).
    assert res.lower == pytest.approx(mu - eps * model.wnorm, abs=0.03)
    assert res.upper == pytest.approx(mu + eps * model.wnorm, abs=0.03)
    assert res.guarantee is Guarantee.PERCENTILE_BOUNDS and res.eps_x == eps


def test_ms_coverage_matches_exact_binomial_rate() -> None:
    """For a linear f the MS bound is tight, so the violation rate equals a binomial closed form."""
    sigma, eps, n, alpha, r = 0.5, 0.25, 61, 0.8, 1500
    model = Linear(scale=1.5)
    x = _copies(r)
    ms = MedianSmoothedIQA(model, sigma=sigma, clip=False, batch_size=r * n)
    res = ms.certify(x, n=n, alpha=alpha, eps=eps, generator=_gen(1))
    mu, shift = float(model.margin(x[:1])), eps * model.wnorm
    viol = sum((c.lower > mu - shift) or (c.upper < mu + shift) for c in res)
    k_lo, k_hi = order_statistic_indices(n, sigma=sigma, eps=eps, alpha=alpha)  # type: ignore[misc]
    p_lo, p_hi = norm.cdf(-eps / sigma), norm.cdf(eps / sigma)
    # A: fewer than k_lo draws below q_lo; B: at least k_hi draws below q_hi.  P(A or B) exactly,
    # with N1 ~ Bin(n, p_lo) draws below q_lo and, given N1 = j, Bin(n - j, (p_hi-p_lo)/(1-p_lo)) between.
    j = np.arange(k_lo)
    both = np.sum(binom.pmf(j, n, p_lo) * binom.sf(k_hi - 1 - j, n - j, (p_hi - p_lo) / (1 - p_lo)))
    exact = binom.cdf(k_lo - 1, n, p_lo) + binom.sf(k_hi - 1, n, p_hi) - both
    assert exact <= 1 - alpha
    assert viol <= _tolerance(r, exact)
    assert viol >= binom.ppf(1e-4, r, exact)


def test_ms_abstains_when_n_too_small() -> None:
    ms = MedianSmoothedIQA(ToyNR(), sigma=0.25)
    res = ms.certify(random_images(2, 16, 16), n=5, alpha=0.999, eps=0.25, generator=_gen())
    assert all(c.abstained and c.reason is AbstainReason.NO_ORDER_STATISTIC for c in res)
    assert all(c.lower is None and math.isfinite(c.score) for c in res)


# ------------------------------------------------------------------- RS-Reg
def test_hoeffding_halfwidth_closed_form() -> None:
    for n, alpha, width in [(100, 0.99, 1.0), (2000, 0.999, 4.0), (7, 0.5, 0.3)]:
        t = hoeffding_halfwidth(n, alpha=alpha, width=width)
        assert 2 * math.exp(-2 * n * t**2 / width**2) == pytest.approx(1 - alpha, rel=1e-12)


def test_bounded_mean_certificate_is_exact_for_halfspace() -> None:
    """With the exact smoothed mean, the bound equals the smoothed mean at the worst point."""
    sigma = 0.4
    model = HalfSpace(scale=1.0, c=-0.2, score_range=(1.0, 5.0))
    x = _copies(1)
    m = float(model.margin(x))
    p = norm.cdf(m / (sigma * model.wnorm))
    for eps in (0.0, 0.1, 0.5, 1.3):
        lo, hi = bounded_mean_certificate(np.array([p]), np.array([p]), eps=eps, sigma=sigma)
        assert lo[0] == pytest.approx(norm.cdf((m - eps * model.wnorm) / (sigma * model.wnorm)), abs=1e-12)
        assert hi[0] == pytest.approx(norm.cdf((m + eps * model.wnorm) / (sigma * model.wnorm)), abs=1e-12)
    lo, hi = bounded_mean_certificate(np.array([0.0]), np.array([1.0]), eps=0.3, sigma=sigma)
    assert lo[0] == 0.0 and hi[0] == 1.0


def test_rs_reg_coverage_on_halfspace() -> None:
    sigma, eps, n, alpha, r = 0.5, 0.2, 100, 0.8, 600
    model = HalfSpace(scale=1.0, c=0.05, score_range=(0.0, 2.0))
    x = _copies(r)
    rs = MeanSmoothedIQA(model, sigma=sigma, clip=False, batch_size=r * n)
    res = rs.certify(x, n=n, alpha=alpha, eps=eps, generator=_gen(2))
    m, wn = float(model.margin(x[:1])), model.wnorm
    g_lo = 2 * norm.cdf((m - eps * wn) / (sigma * wn))
    g_hi = 2 * norm.cdf((m + eps * wn) / (sigma * wn))
    viol = sum((c.lower > g_lo) or (c.upper < g_hi) for c in res)
    assert viol <= _tolerance(r, 1 - alpha)
    assert all(c.guarantee is Guarantee.MEAN_BOUNDS for c in res)


def test_rs_reg_mean_matches_probit_closed_form() -> None:
    sigma, n, alpha = 0.5, 4000, 0.999
    model = Probit(scale=1.2, c=0.1)
    x = _copies(1)
    rs = MeanSmoothedIQA(model, sigma=sigma, clip=False, batch_size=n)
    res = rs.certify(x, n=n, alpha=alpha, eps=0.1, generator=_gen(3))[0]
    g = norm.cdf(float(model.margin(x)) / math.sqrt(1 + sigma**2 * model.wnorm**2))
    assert abs(res.score - g) <= hoeffding_halfwidth(n, alpha=alpha, width=1.0)
    assert res.lower <= g <= res.upper  # type: ignore[operator]


def test_valid_interval_indices_brute_force() -> None:
    n, p_valid, eps, sigma, alpha = 200, 0.6, 0.1, 0.25, 0.95
    k1, k2 = valid_interval_indices(n, p_valid=p_valid, eps=eps, sigma=sigma, alpha=alpha)  # type: ignore[misc]
    tau = (1 - norm.cdf(norm.ppf(p_valid) + eps / sigma)) / 2
    a = (1 - alpha) / 2
    ok_lo = [k for k in range(1, n + 1) if sum(binom.pmf(j, n, tau) for j in range(k, n + 1)) >= 1 - a]
    ok_hi = [k for k in range(1, n + 1) if sum(binom.pmf(j, n, 1 - tau) for j in range(0, k)) >= 1 - a]
    assert (k1, k2) == (max(ok_lo), min(ok_hi))
    assert valid_interval_indices(3, p_valid=0.9, eps=0.5, sigma=0.25, alpha=0.999) is None


def test_rs_reg_probabilistic_coverage_on_linear() -> None:
    sigma, eps, n, alpha, r, p_valid = 0.5, 0.25, 80, 0.8, 600, 0.5
    model = Linear(scale=1.0)
    x = _copies(r)
    rs = MeanSmoothedIQA(model, sigma=sigma, certificate="probabilistic", p_valid=p_valid,
                         output_range=(-50.0, 50.0), clip=False, batch_size=r * n)
    res = rs.certify(x, n=n, alpha=alpha, eps=eps, generator=_gen(4))
    mu, s, shift = float(model.margin(x[:1])), sigma * model.wnorm, eps * model.wnorm
    viol = 0
    for c in res:
        assert c.guarantee is Guarantee.PROBABILISTIC and not c.abstained
        # P(f(x'+e) in [L, U]) over the ball is smallest at an end of the shift range.
        worst = min(norm.cdf((c.upper - m) / s) - norm.cdf((c.lower - m) / s) for m in (mu - shift, mu + shift))
        viol += worst < p_valid
    assert viol <= _tolerance(r, 1 - alpha)


# ----------------------------------------------------------------- Cert-Reg
def test_trimmed_mean_matches_scipy() -> None:
    v = torch.randn(3, 57, generator=_gen(5), dtype=torch.float64)
    for trim in (0.0, 0.1, 0.25, 0.49):
        ours = trimmed_mean(v, trim).numpy()
        ref = np.array([trim_mean(row, trim) for row in v.numpy()])
        np.testing.assert_allclose(ours, ref, rtol=1e-12)
    with pytest.raises(InputError):
        trimmed_mean(v, 0.5)


def test_dkw_halfwidth_closed_form() -> None:
    g = dkw_halfwidth(500, alpha=0.99)
    assert 2 * math.exp(-2 * 500 * g**2) == pytest.approx(0.01, rel=1e-12)


def test_trimmed_mean_bounds_near_gaussian_closed_form() -> None:
    """Large n: the certified bounds approach mu -/+ eps ||w||, the trimmed means at the worst points."""
    mu, s, sigma, eps, n = 0.3, 0.8, 0.5, 0.25, 200_000
    v = (mu + s * torch.randn(1, n, generator=_gen(6), dtype=torch.float64)).sort(dim=1).values
    lo, hi = trimmed_mean_bounds(v, trim=0.2, eps=eps, sigma=sigma, alpha=0.99, output_range=(-20, 20))
    shift = eps / sigma * s
    assert float(lo) <= mu - shift <= float(lo) + 0.05
    assert float(hi) - 0.05 <= mu + shift <= float(hi)


def test_cert_reg_coverage_on_linear() -> None:
    sigma, eps, n, alpha, r = 0.5, 0.2, 200, 0.8, 400
    model = Linear(scale=1.0, c=0.2)
    x = _copies(r)
    cr = TrimmedMeanSmoothedIQA(model, sigma=sigma, trim=0.2, output_range=(-50.0, 50.0), clip=False,
                                batch_size=r * n, grid=512)
    res = cr.certify(x, n=n, alpha=alpha, eps=eps, generator=_gen(7))
    mu, shift = float(model.margin(x[:1])), eps * model.wnorm
    viol = sum((c.lower > mu - shift) or (c.upper < mu + shift) for c in res)
    assert viol <= _tolerance(r, 1 - alpha)
    assert all(c.lower <= c.score <= c.upper for c in res)  # type: ignore[operator]


# ------------------------------------------------------- all defenses on toys
def _defense(name: str, model: IQAModel, sigma: float):  # type: ignore[no-untyped-def]
    opts: dict[str, object] = {"batch_size": 50}
    if name in ("dms", "dms-iqa"):
        den = DnCNN(depth=3, width=8).reset_parameters(_gen(9))
        with torch.no_grad():
            den.residual[-1].weight.normal_(0, 0.01, generator=_gen(10))
        opts["denoiser"] = den
    return create_defense(name, model, sigma=sigma, **opts)


@pytest.mark.parametrize("name", ["ms", "dms", "dms-iqa", "rs-reg", "cert-reg"])
@pytest.mark.parametrize("fr", [False, True])
def test_defense_on_toy_models(name: str, fr: bool) -> None:
    model = ToyFR() if fr else ToyNR()
    x = random_images(2, 16, 16, seed=11)
    ref = random_images(2, 16, 16, seed=12) if fr else None
    d = _defense(name, model, 0.25)
    assert d.mode is model.mode and d.lower_better == model.lower_better
    res = d.certify(x, ref, n=120, alpha=0.99, eps=0.1, generator=_gen(13))
    again = d.certify(x, ref, n=120, alpha=0.99, eps=0.1, generator=_gen(13))
    assert len(res) == 2 and [c.to_dict() for c in res] == [c.to_dict() for c in again]
    for c in res:
        assert not c.abstained and c.defense == name and c.eps_x == 0.1
        assert math.isfinite(c.score) and c.lower <= c.score <= c.upper  # type: ignore[operator]
    p = d.predict(x, ref, n=120, generator=_gen(13))
    assert p.shape == (2,) and torch.allclose(p.double(), torch.tensor([c.score for c in res], dtype=torch.float64))
    xg = x.clone().requires_grad_(True)
    v = d.noisy_scores(xg, ref, n=8, generator=_gen(14))
    assert v.shape == (2, 8)
    v.sum().backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0  # type: ignore[union-attr]


def test_chunking_does_not_change_draws() -> None:
    x = random_images(1, 16, 16, seed=15)
    small = MedianSmoothedIQA(ToyNR(), sigma=0.3, batch_size=7).noisy_scores(x, n=30, generator=_gen(16))
    big = MedianSmoothedIQA(ToyNR(), sigma=0.3, batch_size=1000).noisy_scores(x, n=30, generator=_gen(16))
    torch.testing.assert_close(small, big)


def test_noise_is_clipped_and_ref_fixed() -> None:
    seen: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    class Spy(ToyFR):
        def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
            seen.append((x.detach(), None if ref is None else ref.detach()))
            return super().forward(x, ref)

    x, ref = random_images(2, 16, 16, seed=17), random_images(2, 16, 16, seed=18)
    MedianSmoothedIQA(Spy(), sigma=1.0, batch_size=8).noisy_scores(x, ref, n=9, generator=_gen())
    zs = torch.cat([z for z, _ in seen])
    assert zs.min() >= 0 and zs.max() <= 1 and (zs == 0).any() and (zs == 1).any()
    assert sum(len(z) for z, _ in seen) == 2 * 9
    for _, r in seen:  # each chunk holds (B, c) draws, flattened image-major; ref is the image's own
        assert r is not None
        torch.testing.assert_close(r.reshape(2, -1, 3, 16, 16), ref[:, None].expand(2, len(r) // 2, 3, 16, 16))


def test_bad_inputs_raise_input_error() -> None:
    x = random_images(1, 16, 16)
    with pytest.raises(InputError, match="train-denoiser"):
        create_defense("dms", ToyNR(), sigma=0.123)
    with pytest.raises(InputError, match="takes no argument 'denoiser'"):
        create_defense("ms", ToyNR(), sigma=0.25, denoiser="x.safetensors")
    with pytest.raises(InputError, match="ref"):
        create_defense("ms", ToyFR(), sigma=0.25).certify(x, n=50, alpha=0.9, eps=0.1)
    with pytest.raises(InputError, match="eps"):
        create_defense("ms", ToyNR(), sigma=0.25).certify(x, n=50, alpha=0.9, eps=-1.0)
    with pytest.raises(InputError, match="certificate"):
        create_defense("rs-reg", ToyNR(), sigma=0.25, certificate="bogus")
    with pytest.raises(InputError, match="trim"):
        create_defense("cert-reg", ToyNR(), sigma=0.25, trim=0.7)
    with pytest.raises(InputError, match="output_range"):
        create_defense("rs-reg", ToyNR(), sigma=0.25, output_range=(1.0, 0.0))
    with pytest.raises(InputError, match="sigma"):
        create_defense("ms", ToyNR(), sigma=0.0)
