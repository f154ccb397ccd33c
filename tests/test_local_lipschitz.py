"""The pieces of the local radius: derivative ranges, curvature bounds, the bisection."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import jacrev

from robustbench_iqa.certify.local_lipschitz import (
    RHO_STAR_SQ,
    PathBound,
    channel_norm_step,
    concatenate,
    derivative_range,
    pooled_step,
    radius_from_bounds,
)
from robustbench_iqa.models.embedded import _EPS, channel_normalize


@pytest.mark.parametrize("act", [nn.SiLU(), nn.GELU(), nn.Sigmoid()])
def test_derivative_range_is_the_exact_range_on_each_interval(act: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    lo = torch.randn(300, generator=g, dtype=torch.float64) * 4
    hi = lo + torch.rand(300, generator=g, dtype=torch.float64) * 6
    dmin, dmax = derivative_range(act, lo, hi)
    t = (lo[:, None] + (hi - lo)[:, None] * torch.linspace(0, 1, 20001, dtype=torch.float64)).requires_grad_(True)
    (d,) = torch.autograd.grad(act(t).sum(), t)
    assert bool((dmin <= d.min(dim=1).values + 1e-12).all() and (dmax >= d.max(dim=1).values - 1e-12).all())
    assert torch.allclose(dmin, d.min(dim=1).values, atol=1e-7) and torch.allclose(dmax, d.max(dim=1).values, atol=1e-7)


def test_path_composition_is_the_telescoping_bound() -> None:
    p = PathBound(lip=2.0, var=0.5, dev=0.1).step(3.0, 0.25)
    assert (p.lip, p.var, p.dev) == (6.0, 3.0 * 0.5 + 0.25 * 2.0, 0.30000000000000004)
    c = concatenate([PathBound(3, 4, 0), PathBound(4, 3, 1)])
    assert (c.lip, c.var, c.dev) == (5.0, 5.0, 1.0)


def _curvature(rho: float) -> float:
    s = rho * rho + _EPS
    return 3 * rho * s**-1.5 + 3 * rho**3 * s**-2.5


def test_channel_norm_curvature_peaks_where_stated() -> None:
    rho = torch.linspace(0, 5 * math.sqrt(_EPS), 200001, dtype=torch.float64)
    s = rho**2 + _EPS
    k = 3 * rho * s**-1.5 + 3 * rho**3 * s**-2.5
    assert float(rho[k.argmax()] ** 2 / _EPS) == pytest.approx(RHO_STAR_SQ, rel=1e-3)


@pytest.mark.parametrize("scale", [1e-4, 1e-3, 1e-2, 1.0])
def test_channel_norm_jacobian_variation_within_the_bound(scale: float) -> None:
    """||Dn(v') - Dn(v)|| <= sup_segment k(|w|) ||v' - v|| (and the step's bound uses the worst pixel)."""
    g = torch.Generator().manual_seed(1)

    def dn(v: torch.Tensor) -> torch.Tensor:
        return jacrev(lambda z: channel_normalize(z[None, :, None, None])[0, :, 0, 0])(v)

    for _ in range(20):
        v = torch.randn(5, generator=g, dtype=torch.float64) * scale
        d = torch.randn(5, generator=g, dtype=torch.float64) * scale * 0.3
        lhs = float(torch.linalg.matrix_norm(dn(v + d) - dn(v), ord=2))
        rho = max(0.0, float(v.norm()) - float(d.norm()))
        sup_k = _curvature(max(rho, math.sqrt(RHO_STAR_SQ * _EPS)))
        assert lhs <= sup_k * float(d.norm()) * (1 + 1e-9)
        u = v[:, None, None]
        step = channel_norm_step(PathBound(1.0, 0.0, float(d.norm())), u)
        assert lhs <= step.var * (1 + 1e-9)
        assert float(torch.linalg.matrix_norm(dn(v + d), ord=2)) <= step.lip


def test_std_pooling_gradient_variation_within_the_bound() -> None:
    g = torch.Generator().manual_seed(2)
    n = 12

    def grad_s(h: torch.Tensor) -> torch.Tensor:
        return jacrev(lambda z: torch.sqrt(z.var(unbiased=False) + _EPS))(h)

    for scale in (1e-3, 1e-1, 1.0):
        h = torch.randn(n, generator=g, dtype=torch.float64) * scale
        d = torch.randn(n, generator=g, dtype=torch.float64) * scale * 0.5
        spread = torch.sqrt(h.var(unbiased=False) + _EPS)[None]
        step = pooled_step(PathBound(1.0, 0.0, float(d.norm())), spread, n)
        assert float((grad_s(h + d) - grad_s(h)).norm()) <= step.var * (1 + 1e-9)


def test_bisection_finds_the_closed_form_radius() -> None:
    """||J(x)|| = 2, V(r) = 10 r, no global bound: r (2 + 10 r) = sigma."""
    sigma = 0.25
    r_true = (-2 + math.sqrt(4 + 40 * sigma)) / 20
    r = radius_from_bounds(sigma, 2.0, None, lambda r: PathBound(lip=1e9, var=10 * r, dev=0.0))
    assert r <= r_true and r == pytest.approx(r_true, rel=1e-4)
    # With a global bound L, the radius is never below sigma / L.
    assert radius_from_bounds(sigma, 2.0, 3.0, lambda r: PathBound(1e9, 1e9 * r, 0.0)) == pytest.approx(sigma / 3)
