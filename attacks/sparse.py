"""A sparse (L0) score-based attack; with ``pixels=1`` a one-pixel attack.

After Sparse-RS (Croce et al. 2022, AAAI, "Sparse-RS: a versatile framework for
query-efficient sparse black-box adversarial attacks", its L0 attack), adapted to
a score objective: at most k pixel positions change, each to a vertex of its
colour box [x - eps, x + eps] ∩ [0, 1] per channel (eps = 1, the default, allows
any colour; Su et al. 2019's one-pixel attack sets k = 1).  The search
(:mod:`robustbench_iqa.attacks.search`) starts from k random positions with
random vertex colours; each query swaps m = max(1, round(alpha_i k)) of the
positions for as many positions outside the set, with new random colours, and
keeps the candidate if it raises the gain; alpha_i starts at ``alpha_init`` and
halves on Square attack's schedule.  (Su et al. search one pixel by differential
evolution; this is the random search of Sparse-RS.)

The threat model is L0 (k changed pixel positions) intersected with Linf (eps);
``norm`` must be ``"linf"``.  No gradient is used.  For a visible-quality
constraint: k pixels changed by at most 1 in every channel give
PSNR >= 10 log10(H W / k).
"""

from __future__ import annotations

from typing import Any

import torch

from robustbench_iqa.attacks.registry import register_attack
from robustbench_iqa.attacks.search import QueryAttack, halving_schedule, rand, random_signs
from robustbench_iqa.attacks.threat import ThreatModel
from robustbench_iqa.errors import InputError


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def changed_pixels(adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per image, the number of pixel positions where any channel differs (B,): the L0 size."""
    return (adv != x).any(dim=1).reshape(adv.shape[0], -1).sum(dim=1)


@register_attack("sparse", threat=("l0",), gradient=False,
                 reference="Croce et al. 2022 (Sparse-RS, L0); Su et al. 2019 (one-pixel) with pixels=1",
                 description="sparse random search: at most `pixels` pixels change, no gradients")
class SparseAttack(QueryAttack):
    """``SparseAttack(*, pixels=1, eps=1.0, norm="linf", queries=100, alpha_init=0.3)`` (see the module doc)."""

    name = "sparse"

    def __init__(self, *, pixels: int = 1, eps: float = 1.0, norm: ThreatModel | str = ThreatModel.LINF,
                 queries: int = 100, alpha_init: float = 0.3) -> None:
        super().__init__(eps=eps, norm=norm, queries=queries)
        if self.norm is not ThreatModel.LINF:
            raise InputError("the sparse attack bounds the changed pixels in Linf: use norm 'linf'")
        if isinstance(pixels, bool) or not isinstance(pixels, int) or pixels < 1:
            raise InputError(f"pixels must be a positive integer, got {pixels!r}")
        if not (0 < alpha_init <= 1):
            raise InputError(f"alpha_init must lie in (0, 1], got {alpha_init!r}")
        self.pixels, self.alpha_init = pixels, float(alpha_init)

    def __repr__(self) -> str:
        return f"SparseAttack(pixels={self.pixels}, eps={self.eps:g}, queries={self.queries})"

    @staticmethod
    def _render(x0: torch.Tensor, eps: torch.Tensor, chosen: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x0.shape
        vertex = (x0 + signs.reshape(b, c, h, w) * _bcast(eps, x0)).clamp(0, 1)
        return torch.where(chosen.reshape(b, 1, h, w), vertex, x0)

    def _pick(self, scores: torch.Tensor, k: int) -> torch.Tensor:
        """A (B, N) boolean mask of the k highest-scoring positions per row."""
        idx = scores.topk(k, dim=1).indices
        return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, idx, True)

    def init(self, x0: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None) -> dict[str, Any]:
        b, c, h, w = x0.shape
        if self.pixels >= h * w:
            raise InputError(f"pixels={self.pixels} must be below the {h * w} pixels of the image")
        chosen = self._pick(rand((b, h * w), generator, x0), self.pixels)
        signs = random_signs((b, c, h * w), generator, x0)
        return {"x": self._render(x0, eps, chosen, signs), "chosen": chosen, "signs": signs}

    def propose(self, state: dict[str, Any], x0: torch.Tensor, eps: torch.Tensor, i: int,
                generator: torch.Generator | None) -> dict[str, Any]:
        b, c, h, w = x0.shape
        k = self.pixels
        m = max(1, min(k, round(halving_schedule(self.alpha_init, i, self.queries) * k)))
        chosen = state["chosen"]
        # m positions leave the set, m positions outside it join; scores of -1 exclude.
        out = self._pick(torch.where(chosen, rand((b, h * w), generator, x0), -1.0), m)
        into = self._pick(torch.where(chosen, -1.0, rand((b, h * w), generator, x0)), m)
        new_chosen = (chosen & ~out) | into
        signs = torch.where(into.unsqueeze(1), random_signs((b, c, h * w), generator, x0), state["signs"])
        return {"x": self._render(x0, eps, new_chosen, signs), "chosen": new_chosen, "signs": signs}
