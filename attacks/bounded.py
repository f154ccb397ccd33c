"""A quality-aware attack: PGD whose iterates also respect a perceptual-distance bound.

The eps-ball of Lp attacks ignores where a change is visible.  This attack keeps
the Lp budget and adds a perceptual constraint d(x', x) <= ``max_distance``
against the clean image x, as the SSIM- or LPIPS-bounded attacks of the IQA
robustness benchmarks do.  LPIPS needs downloaded weights; the suite offers two
distances that work offline:

* ``"ssim"`` (default): d = 1 - SSIM(x', x) (:func:`robustbench_iqa.attacks.similarity.ssim`),
  so ``max_distance = 0.05`` means SSIM >= 0.95;
* ``"default-fr"``: d = F(x', x) - F(x, x) with the embedded full-reference
  model F (``create_model("default-fr")``, a learned LPIPS-like distance in [0, 1]).

After each projected step (onto the eps-ball and the [0, 1] box) an iterate that
breaks the bound is pulled back along the segment to the clean image,
x' <- x + t (x' - x), with the largest t in [0, 1] found by ``bisection`` halvings
that keeps d <= max_distance (t = 0 always does).  Every returned image therefore
satisfies both the Lp budget and the perceptual bound; each step costs up to
``bisection`` + 1 evaluations of d.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from robustbench_iqa.attacks.gradient import IFGSM
from robustbench_iqa.attacks.registry import register_attack
from robustbench_iqa.attacks.similarity import ssim
from robustbench_iqa.attacks.threat import ThreatModel, project
from robustbench_iqa.errors import InputError

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def ssim_distance(x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """1 - SSIM(x, x0), per image."""
    return 1.0 - ssim(x, x0)


class FRDistance:
    """d(x, x0) = F(x, x0) - F(x0, x0) for a lower-is-better full-reference model F."""

    def __init__(self, model: Any) -> None:
        if not getattr(model, "full_reference", False) or not getattr(model, "lower_better", False):
            raise InputError("a perceptual distance must be a full-reference, lower-is-better model")
        self.model = model

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return (self.model(x, x0) - self.model(x0, x0)).reshape(-1)


def perceptual_distance(name: str) -> Distance:
    """The distance named ``"ssim"`` or ``"default-fr"`` (see the module doc)."""
    key = name.lower() if isinstance(name, str) else name
    if key == "ssim":
        return ssim_distance
    if key == "default-fr":
        from robustbench_iqa.models.registry import create_model

        return FRDistance(create_model("default-fr"))
    raise InputError(f"unknown perceptual distance {name!r}; use 'ssim' or 'default-fr'")


@register_attack("perceptual-bounded", threat=("linf", "l2"), gradient=True,
                 reference="SSIM/LPIPS-bounded attacks of the IQA benchmarks; SSIM: Wang et al. 2004",
                 description="PGD inside the eps-ball and under a perceptual bound (1 - SSIM or default-fr)")
class PerceptualBoundedAttack(IFGSM):
    """``PerceptualBoundedAttack(*, eps, steps=10, step_size=None, norm="linf", distance="ssim",
    max_distance=0.05, bisection=8, restarts=1, random_start=False, eval_every=0)``."""

    name = "perceptual-bounded"

    def __init__(self, *, eps: float, steps: int = 10, step_size: float | None = None,
                 norm: ThreatModel | str = ThreatModel.LINF, distance: str = "ssim", max_distance: float = 0.05,
                 bisection: int = 8, restarts: int = 1, random_start: bool = False, eval_every: int = 0) -> None:
        super().__init__(eps=eps, steps=steps, step_size=step_size, norm=norm, restarts=restarts,
                         random_start=random_start, eval_every=eval_every)
        if not (max_distance > 0):
            raise InputError(f"max_distance must be > 0, got {max_distance!r}")
        if isinstance(bisection, bool) or not isinstance(bisection, int) or bisection < 1:
            raise InputError(f"bisection must be a positive integer, got {bisection!r}")
        self.distance_name = str(distance)
        self.distance = perceptual_distance(distance)
        self.max_distance, self.bisection = float(max_distance), bisection

    def init_state(self, x0: torch.Tensor, ref: torch.Tensor | None) -> dict[str, Any]:
        model = getattr(self.distance, "model", None)
        if model is not None:
            model.to(x0.device)
        return {}

    @torch.no_grad()
    def limit(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Pull each image that breaks the bound back towards x0 (bisection on the segment)."""
        over = self.distance(x, x0) > self.max_distance
        if not bool(over.any()):
            return x
        lo, hi = torch.zeros_like(over, dtype=x.dtype), torch.ones_like(over, dtype=x.dtype)
        d = x - x0
        for _ in range(self.bisection):
            mid = (lo + hi) / 2
            ok = self.distance(x0 + _bcast(mid, d) * d, x0) <= self.max_distance
            lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
        t = torch.where(over, lo, torch.ones_like(lo))
        return x0 + _bcast(t, d) * d

    def project(self, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        return self.limit(project(x, x0, eps, self.norm), x0)
