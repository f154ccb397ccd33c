"""Square attack (Andriushchenko et al. 2020, ECCV), Linf and L2, adapted to a score objective.

A score-based random search with localized square updates
(:mod:`robustbench_iqa.attacks.search`).  The paper's margin loss is replaced by
the objective's gain g(S(x')): a candidate is kept when it raises the gain.  The
window covers a fraction p of the image, side s = round(sqrt(p H W)), and p
halves at queries {10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000} of 10,000
(rescaled to the query budget); p_init is 0.05 (Linf) or 0.1 (L2) as in the paper.

Linf (paper Alg. 2): the start is vertical stripes, x + eps * (one random sign
per image, channel and column); each update sets an s x s window, per channel, to
x + eps or x - eps (a vertex of the ball), clipped to [0, 1].

L2 (paper Sec. 3.2): the start is a grid of pseudo-Gaussian tiles with random
signs per channel, scaled to norm eps.  Each update picks two s x s windows W1, W2
and, per channel c, moves the mass of W1 and W2 into W1:

    u_c = delta_c[W1] / ||delta_c[W1]|| + sign_c * D,       ||D|| = 1,
    delta'_c[W2] = 0,   delta'_c[W1] = nu_c u_c / ||u_c||,
    nu_c^2 = (eps^2 - ||delta||^2) / C + ||delta_c[W1 u W2]||^2,

so that ||delta'|| = eps: D is a pseudo-Gaussian "dipole" (a bump and a negated
bump side by side, in a random orientation), the bump on ring k (Chebyshev
distance from the centre) weighing sum_{j >= k} 1/(j + 1)^2.  The result is
clipped to [0, 1], which only shortens the perturbation.

No gradient is used: the attack sees only ``objective.evaluate`` (works on
non-differentiable models and through a randomized defense's prediction).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from robustbench_iqa.attacks.registry import register_attack
from robustbench_iqa.attacks.search import (
    QueryAttack,
    halving_schedule,
    rand,
    randint,
    random_signs,
    window_masks,
    window_side,
)
from robustbench_iqa.attacks.threat import ThreatModel, norms, project
from robustbench_iqa.errors import InputError


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def pseudo_gaussian(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """An (h, w) bump: ring k (Chebyshev distance from the centre) weighs sum_{j=k}^{K} 1/(j+1)^2."""
    i = torch.arange(h, device=like.device, dtype=like.dtype).reshape(-1, 1)
    j = torch.arange(w, device=like.device, dtype=like.dtype).reshape(1, -1)
    ring = torch.maximum((i - (h - 1) / 2).abs(), (j - (w - 1) / 2).abs()).floor().long()
    k = int(ring.max())
    inv = 1.0 / torch.arange(1, k + 2, device=like.device, dtype=like.dtype).pow(2)
    tail = inv.flip(0).cumsum(0).flip(0)  # tail[k] = sum_{j >= k} 1/(j+1)^2
    return tail[ring]


def dipole(s: int, like: torch.Tensor, *, transpose: bool) -> torch.Tensor:
    """An (s, s) unit-norm pattern: a bump and a negated bump side by side."""
    left, right = s // 2, s - s // 2
    d = torch.cat([pseudo_gaussian(s, left, like), -pseudo_gaussian(s, right, like)], dim=1)
    d = d / d.norm()
    return d.T.contiguous() if transpose else d


@register_attack("square", threat=("linf", "l2"), gradient=False,
                 reference="Andriushchenko et al. 2020 (ECCV), score objective instead of margin loss",
                 description="Square attack: random search with square updates, no gradients")
class SquareAttack(QueryAttack):
    """``SquareAttack(*, eps, norm="linf", queries=100, p_init=None)`` (see the module doc)."""

    name = "square"

    def __init__(self, *, eps: float, norm: ThreatModel | str = ThreatModel.LINF, queries: int = 100,
                 p_init: float | None = None) -> None:
        super().__init__(eps=eps, norm=norm, queries=queries)
        if p_init is None:
            p_init = 0.05 if self.norm is ThreatModel.LINF else 0.1
        if not (0 < p_init <= 1):
            raise InputError(f"p_init must lie in (0, 1], got {p_init!r}")
        self.p_init = float(p_init)

    # ----------------------------------------------------------------- Linf
    def init(self, x0: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None) -> dict[str, Any]:
        b, c, h, w = x0.shape
        if self.norm is ThreatModel.LINF:
            stripes = random_signs((b, c, 1, w), generator, x0) * _bcast(eps, x0)
            return {"x": (x0 + stripes).clamp(0, 1)}
        ts = max(2, min(h, w) // 8)
        nh, nw = math.ceil(h / ts), math.ceil(w / ts)
        signs = random_signs((b, c, nh, nw), generator, x0)
        signs = signs.repeat_interleave(ts, dim=2).repeat_interleave(ts, dim=3)[..., :h, :w]
        bump = pseudo_gaussian(ts, ts, x0).repeat(nh, nw)[:h, :w]
        delta = signs * bump
        delta = delta * _bcast(eps / norms(delta, ThreatModel.L2).clamp_min(1e-12), x0)
        return {"x": project(x0 + delta, x0, eps, ThreatModel.L2)}

    def propose(self, state: dict[str, Any], x0: torch.Tensor, eps: torch.Tensor, i: int,
                generator: torch.Generator | None) -> dict[str, Any]:
        p = halving_schedule(self.p_init, i, self.queries)
        if self.norm is ThreatModel.LINF:
            return {"x": self._linf(state["x"], x0, eps, p, generator)}
        return {"x": self._l2(state["x"], x0, eps, p, generator)}

    @staticmethod
    def _linf(cur: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, p: float,
              generator: torch.Generator | None) -> torch.Tensor:
        b, c, h, w = x0.shape
        s = window_side(p, h, w)
        mask, _ = window_masks(b, h, w, (s, s), generator, x0)
        colours = random_signs((b, c, 1, 1), generator, x0) * _bcast(eps, x0)
        cand = torch.where(mask, (x0 + colours).clamp(0, 1), cur)
        # A window that already holds these values would waste the query: flip its colours.
        same = (cand == cur).reshape(b, -1).all(dim=1)
        flipped = torch.where(mask, (x0 - colours).clamp(0, 1), cur)
        return torch.where(_bcast(same, cand), flipped, cand)

    def _l2(self, cur: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, p: float,
            generator: torch.Generator | None) -> torch.Tensor:
        b, c, h, w = x0.shape
        s = window_side(p, h, w, minimum=3)
        delta = cur - x0
        new = delta.clone()
        r1, c1 = randint(h - s + 1, b, generator), randint(w - s + 1, b, generator)
        r2, c2 = randint(h - s + 1, b, generator), randint(w - s + 1, b, generator)
        signs = random_signs((b, c, 1, 1), generator, x0)
        flips = rand((b,), generator, x0) < 0.5
        total = norms(delta, ThreatModel.L2)
        for k in range(b):
            d = delta[k]
            w1 = d[:, r1[k]:r1[k] + s, c1[k]:c1[k] + s]
            union = torch.zeros((h, w), dtype=torch.bool, device=x0.device)
            union[r1[k]:r1[k] + s, c1[k]:c1[k] + s] = True
            union[r2[k]:r2[k] + s, c2[k]:c2[k] + s] = True
            n1 = w1.pow(2).sum(dim=(1, 2)).sqrt()
            n12 = (d * union).pow(2).sum(dim=(1, 2))
            nu = ((float(eps[k]) ** 2 - float(total[k]) ** 2) / c + n12).clamp_min(0).sqrt()
            u = w1 / (n1.reshape(-1, 1, 1) + 1e-10) + signs[k] * dipole(s, x0, transpose=bool(flips[k]))
            u = u / u.pow(2).sum(dim=(1, 2), keepdim=True).sqrt().clamp_min(1e-12) * nu.reshape(-1, 1, 1)
            new[k, :, r2[k]:r2[k] + s, c2[k]:c2[k] + s] = 0.0
            new[k, :, r1[k]:r1[k] + s, c1[k]:c1[k] + s] = u
        return project(x0 + new, x0, eps, ThreatModel.L2)
