"""MAD competition: move the attacked score while another metric is held fixed.

Wang & Simoncelli, "Maximum differentiation (MAD) competition: a methodology for
comparing computational models of perceptual quantities", Journal of Vision 8(12), 2008.
The synthesis ascends one metric on the level set of another.  Here the ascended
metric is the objective's gain g(S(x')) and the held metric h(x', x) is a
reference metric against the clean image:

* ``"mse"``: h = mean (x' - x)^2, a fixed PSNR (the original MAD's MSE level sets);
* ``"ssim"``: h = SSIM(x', x) (:func:`robustbench_iqa.attacks.similarity.ssim`);
* any callable ``(x', x) -> (B,)``, e.g. ``lambda z, x: other_model(z)`` to hold
  another IQA model's score.

Both MSE and SSIM are extremal at x' = x (zero gradient), so the level is set by
a random start x_0 in the eps-ball (``random_start=True``, the default) and
h* = h(x_0, x); with ``random_start=False`` the level is h(x, x), which suits a
held metric whose gradient at x is not zero (another model's score).  Each step

    d       = grad g - (<grad g, grad h> / ||grad h||^2) grad h        (the ascent direction within the level set)
    x'      = x_t + alpha * direction(d)                                 (sign for Linf, unit vector for L2)
    x'     <- P( x' ),  then ``corrections`` times  x' <- P( x' - (h(x') - h*) grad h(x') / ||grad h(x')||^2 )
    x_{t+1} = x'

with P the projection onto the eps-ball and the [0, 1] box (each Newton step
moves back towards h = h*, each projection restores the budget), which keeps h within a small tolerance of h* (the tests measure it) while the eps-ball
and the [0, 1] box hold exactly.  The loop (best iterate, restarts) is
:class:`~robustbench_iqa.attacks.base.GradientAttack`'s; as everywhere, the clean
image is returned where no iterate beats it, and it does not lie on the level set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from robustbench_iqa.attacks.base import GradientAttack
from robustbench_iqa.attacks.registry import register_attack
from robustbench_iqa.attacks.similarity import mse, ssim
from robustbench_iqa.attacks.threat import ThreatModel, normalized_direction, project
from robustbench_iqa.errors import InputError

HeldMetric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
HELD: dict[str, HeldMetric] = {"mse": mse, "ssim": ssim}


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).reshape(a.shape[0], -1).sum(dim=1)


@register_attack("madc", threat=("linf", "l2"), gradient=True,
                 reference="Wang & Simoncelli 2008 (MAD competition)",
                 description="ascend the score on the level set of a held metric (MSE, SSIM or another model)")
class MADC(GradientAttack):
    """``MADC(*, eps, steps=10, step_size=None, norm="linf", hold="ssim", corrections=5, restarts=1,
    random_start=True, eval_every=0)`` (see the module doc)."""

    name = "madc"

    def __init__(self, *, eps: float, steps: int = 10, step_size: float | None = None,
                 norm: ThreatModel | str = ThreatModel.LINF, hold: str | HeldMetric = "ssim",
                 corrections: int = 5, restarts: int = 1, random_start: bool = True, eval_every: int = 0) -> None:
        super().__init__(eps=eps, steps=steps, step_size=step_size, norm=norm, restarts=restarts,
                         random_start=random_start, eval_every=eval_every)
        if isinstance(hold, str):
            if hold.lower() not in HELD:
                raise InputError(f"unknown held metric {hold!r}; use {', '.join(HELD)} or a callable (x', x) -> (B,)")
            self.held: HeldMetric = HELD[hold.lower()]
        elif callable(hold):
            self.held = hold
        else:
            raise InputError(f"hold must be a metric name or a callable, got {hold!r}")
        if isinstance(corrections, bool) or not isinstance(corrections, int) or corrections < 0:
            raise InputError(f"corrections must be an integer >= 0, got {corrections!r}")
        self.corrections = corrections

    def default_step_size(self) -> float:
        return 2.5 * self.eps / self.steps

    def init_state(self, x0: torch.Tensor, ref: torch.Tensor | None) -> dict[str, Any]:
        return {"x0": x0}

    def _held_and_grad(self, x: torch.Tensor, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            h = self.held(z, x0).reshape(-1)
            (g,) = torch.autograd.grad(h.sum(), z)
        return h.detach(), torch.nan_to_num(g.detach(), nan=0.0, posinf=0.0, neginf=0.0)

    def level(self, x: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        """h* of this restart: h at its starting point (set by the first call)."""
        if "level" not in state:
            with torch.no_grad():
                state["level"] = self.held(x, state["x0"]).reshape(-1).detach()
        return state["level"]

    def step(self, x: torch.Tensor, grad: torch.Tensor, alpha: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        self.level(x, state)
        _, gh = self._held_and_grad(x, state["x0"])
        coef = _dot(grad, gh) / _dot(gh, gh).clamp_min(1e-30)
        d = grad - _bcast(coef, gh) * gh
        return x + _bcast(alpha, x) * normalized_direction(d, self.norm)

    def project(self, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        x = project(x, x0, eps, self.norm)
        if "level" not in state:
            self.level(x, state)
            return x
        target = state["level"]
        for _ in range(self.corrections):
            h, gh = self._held_and_grad(x, x0)
            move = (h - target) / _dot(gh, gh).clamp_min(1e-30)
            x = project(x - _bcast(move, gh) * gh, x0, eps, self.norm)
        return x
