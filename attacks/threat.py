"""Threat models: per-image norms, balls and their projections.

Images live in [0, 1]; a perturbation budget ``eps`` is in the same pixel units.
The L2 norm is taken per image over all pixels and channels,
``||d||_2 = sqrt(sum_{c,h,w} d_{chw}^2)``; the Linf norm is ``max |d_{chw}|``.
Fixed names are an Enum converted at the boundary (RobustBench's
``ThreatModel(threat_model)``): every function accepts ``"linf"`` or
``ThreatModel.LINF``.
"""

from __future__ import annotations

import math
from enum import StrEnum

import torch

from robustbench_iqa.errors import InputError


class ThreatModel(StrEnum):
    """Which norm bounds the perturbation."""

    LINF = "linf"
    L2 = "l2"


def as_threat_model(norm: ThreatModel | str) -> ThreatModel:
    """Convert ``"linf"``/``"l2"`` (any case) to :class:`ThreatModel`; InputError otherwise."""
    try:
        return ThreatModel(norm.lower() if isinstance(norm, str) else norm)
    except ValueError:
        raise InputError(f"unknown threat model {norm!r}; use 'linf' or 'l2'") from None


def check_eps(eps: float) -> float:
    """A budget in [0, 1] pixel units."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or not 0 <= eps:
        raise InputError(f"eps must be a finite number >= 0 (pixel units in [0, 1]), got {eps!r}")
    return float(eps)


def per_image_eps(eps: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Budget per image as a (B,) tensor on ``x``'s device (a float is broadcast)."""
    if isinstance(eps, torch.Tensor):
        e = eps.detach().to(device=x.device, dtype=x.dtype).reshape(-1)
        if e.numel() == 1:
            e = e.expand(x.shape[0])
        if e.numel() != x.shape[0]:
            raise InputError(f"eps has {e.numel()} entries for a batch of {x.shape[0]} images")
        if not bool(torch.isfinite(e).all()) or bool((e < 0).any()):
            raise InputError("per-image eps must be finite and >= 0")
        return e.clone()
    return torch.full((x.shape[0],), check_eps(eps), device=x.device, dtype=x.dtype)


def norms(d: torch.Tensor, norm: ThreatModel | str) -> torch.Tensor:
    """Per-image norm of a batch of perturbations (B, ...) -> (B,)."""
    flat = d.reshape(d.shape[0], -1)
    if as_threat_model(norm) is ThreatModel.L2:
        return flat.norm(p=2, dim=1)
    return flat.abs().amax(dim=1)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def project(x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, norm: ThreatModel | str) -> torch.Tensor:
    """Project ``x`` onto {z : ||z - x0|| <= eps} and then clip to [0, 1].

    Linf: coordinate-wise clamp to [x0 - eps, x0 + eps] (written with min/max
    on x directly, like torchattacks' BIM, so both give identical floats).
    L2: scale d = x - x0 by min(1, eps / ||d||_2).  Clipping to [0, 1] after
    either projection only moves coordinates towards x0 (x0 is in [0, 1]), so
    the result stays in the ball.
    """
    e = _bcast(eps, x)
    if as_threat_model(norm) is ThreatModel.LINF:
        x = torch.min(torch.max(x, x0 - e), x0 + e)
    else:
        d = x - x0
        n = _bcast(norms(d, ThreatModel.L2), x)
        factor = torch.where(n > e, e / n.clamp_min(1e-12), torch.ones_like(n))
        x = x0 + d * factor
    return x.clamp(0.0, 1.0)


def normalized_direction(g: torch.Tensor, norm: ThreatModel | str) -> torch.Tensor:
    """Steepest-ascent direction of unit norm: sign(g) for Linf, g / ||g||_2 for L2 (0 where g = 0)."""
    if as_threat_model(norm) is ThreatModel.LINF:
        return g.sign()
    n = _bcast(norms(g, ThreatModel.L2), g)
    return g / n.clamp_min(1e-12)


def random_in_ball(
    x: torch.Tensor, eps: torch.Tensor, norm: ThreatModel | str, generator: torch.Generator | None
) -> torch.Tensor:
    """A perturbation drawn uniformly from the eps-ball (Linf: cube; L2: ball, radius eps * U^(1/d))."""
    dev = generator.device if generator is not None else x.device
    shape = tuple(x.shape)
    e = _bcast(eps, x)
    if as_threat_model(norm) is ThreatModel.LINF:
        u = torch.rand(shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
        return (2 * u - 1) * e
    g = torch.randn(shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
    r = torch.rand((shape[0],), generator=generator, device=dev, dtype=x.dtype).to(x.device)
    d = g[0].numel()
    radius = _bcast(r.pow(1.0 / d), x) * e
    return normalized_direction(g, ThreatModel.L2) * radius
