"""Score-based random search: a (1+1) evolution strategy with the one-fifth success rule.

The simplest black-box attack that needs only scores (Rechenberg 1973; adaptive
step-size random search, Schumer & Steiglitz 1968), on the loop of
:mod:`robustbench_iqa.attacks.search`.  From a uniformly random point of the ball,
each query proposes

    x' = clip_[0,1]( Proj_{B(x, eps)}( z + sigma * eps * u ) ),   u = direction(N(0, I))

(u = sign for Linf, a unit vector for L2) around the current point z and keeps it
if it raises the gain.  Per image, sigma grows by exp(1/3) after a success and
shrinks by exp(-1/12) after a failure, so it settles where about one proposal in
five succeeds; it is kept in [1e-3, 2].  No gradient is used.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from robustbench_iqa.attacks.registry import register_attack
from robustbench_iqa.attacks.search import QueryAttack, randn
from robustbench_iqa.attacks.threat import (
    ThreatModel,
    normalized_direction,
    project,
    random_in_ball,
)
from robustbench_iqa.errors import InputError

GROW, SHRINK = math.exp(1 / 3), math.exp(-1 / 12)
SIGMA_MIN, SIGMA_MAX = 1e-3, 2.0


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


@register_attack("random-search", threat=("linf", "l2"), gradient=False,
                 reference="Rechenberg 1973, (1+1)-ES with the one-fifth success rule",
                 description="score-based random search with an adaptive step, no gradients")
class RandomSearch(QueryAttack):
    """``RandomSearch(*, eps, norm="linf", queries=100, sigma=0.25)``: sigma is the initial step / eps."""

    name = "random-search"

    def __init__(self, *, eps: float, norm: ThreatModel | str = ThreatModel.LINF, queries: int = 100,
                 sigma: float = 0.25) -> None:
        super().__init__(eps=eps, norm=norm, queries=queries)
        if not (SIGMA_MIN <= sigma <= SIGMA_MAX):
            raise InputError(f"sigma must lie in [{SIGMA_MIN}, {SIGMA_MAX}], got {sigma!r}")
        self.sigma = float(sigma)

    def init(self, x0: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None) -> dict[str, Any]:
        start = project(x0 + random_in_ball(x0, eps, self.norm, generator), x0, eps, self.norm)
        return {"x": start, "sigma": torch.full((x0.shape[0],), self.sigma, dtype=x0.dtype, device=x0.device)}

    def propose(self, state: dict[str, Any], x0: torch.Tensor, eps: torch.Tensor, i: int,
                generator: torch.Generator | None) -> dict[str, Any]:
        u = normalized_direction(randn(tuple(x0.shape), generator, x0), self.norm)
        step = _bcast(state["sigma"] * eps, x0) * u
        return {"x": project(state["x"] + step, x0, eps, self.norm)}

    def adapt(self, state: dict[str, Any], better: torch.Tensor) -> dict[str, Any]:
        sigma = state["sigma"] * torch.where(better, GROW, SHRINK).to(state["sigma"])
        return {**state, "sigma": sigma.clamp(SIGMA_MIN, SIGMA_MAX)}
