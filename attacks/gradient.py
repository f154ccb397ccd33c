"""FGSM, I-FGSM, MI-FGSM and PGD as small subclasses of :class:`GradientAttack`.

All steps use the steepest-ascent direction of the threat model
(:func:`robustbench_iqa.attacks.threat.normalized_direction`): sign(g) for Linf, g/||g||_2 for L2.

* FGSM (Goodfellow et al. 2015): one step of size eps from x.
* I-FGSM / BIM (Kurakin et al. 2017): T projected steps of size alpha from x,
  no random start by default (default alpha = eps / T).
* MI-FGSM (Dong et al. 2018, Eq. 6-7): m_{t+1} = mu m_t + g_t / ||g_t||_1;
  the step follows the direction of m_{t+1}.
* PGD (Madry et al. 2018): I-FGSM from a uniformly random point of the ball
  drawn from the caller's generator (default alpha = 2.5 eps / T);
  ``random_start=False`` starts it at x instead.

Every one returns its best iterate, with ``restarts`` (see
:class:`~robustbench_iqa.attacks.base.GradientAttack`).
"""

from __future__ import annotations

from typing import Any

import torch

from robustbench_iqa.attacks.base import GradientAttack
from robustbench_iqa.attacks.registry import register_attack
from robustbench_iqa.attacks.threat import ThreatModel, normalized_direction
from robustbench_iqa.errors import InputError


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


@register_attack("ifgsm", reference="Kurakin et al. 2017 (BIM)",
                 description="iterative FGSM: projected gradient ascent from x, no random start")
class IFGSM(GradientAttack):
    """Iterative FGSM (BIM): projected gradient ascent, by default without random start.

    ``IFGSM(*, eps, steps=10, step_size=None, norm="linf", restarts=1, random_start=False,
    eval_every=0, tol=1e-4)``; ``step_size`` defaults to eps / steps.
    """

    name = "ifgsm"

    def step(self, x: torch.Tensor, grad: torch.Tensor, alpha: torch.Tensor,
             state: dict[str, Any]) -> torch.Tensor:
        return x + _bcast(alpha, x) * normalized_direction(grad, self.norm)


@register_attack("fgsm", reference="Goodfellow et al. 2015", description="one gradient-sign step of size eps")
class FGSM(IFGSM):
    """Fast gradient sign method: a single step of size eps (``FGSM(*, eps, norm="linf")``)."""

    name = "fgsm"

    def __init__(self, *, eps: float, norm: ThreatModel | str = ThreatModel.LINF) -> None:
        super().__init__(eps=eps, steps=1, step_size=None, norm=norm)

    def default_step_size(self) -> float:
        return self.eps


@register_attack("mifgsm", reference="Dong et al. 2018", description="momentum iterative FGSM")
class MIFGSM(IFGSM):
    """Momentum I-FGSM: ``MIFGSM(*, eps, steps=10, step_size=None, decay=1.0, norm="linf")``."""

    name = "mifgsm"

    def __init__(self, *, eps: float, steps: int = 10, step_size: float | None = None,
                 decay: float = 1.0, norm: ThreatModel | str = ThreatModel.LINF, restarts: int = 1,
                 random_start: bool = False, eval_every: int = 0) -> None:
        super().__init__(eps=eps, steps=steps, step_size=step_size, norm=norm, restarts=restarts,
                         random_start=random_start, eval_every=eval_every)
        if not (decay >= 0):
            raise InputError(f"decay must be >= 0, got {decay!r}")
        self.decay = float(decay)

    def init_state(self, x0: torch.Tensor, ref: torch.Tensor | None) -> dict[str, Any]:
        return {"momentum": torch.zeros_like(x0)}

    def step(self, x: torch.Tensor, grad: torch.Tensor, alpha: torch.Tensor,
             state: dict[str, Any]) -> torch.Tensor:
        l1 = grad.reshape(grad.shape[0], -1).abs().sum(dim=1).clamp_min(1e-12)
        state["momentum"] = self.decay * state["momentum"] + grad / _bcast(l1, grad)
        return x + _bcast(alpha, x) * normalized_direction(state["momentum"], self.norm)


@register_attack("pgd", reference="Madry et al. 2018",
                 description="projected gradient ascent from a random start (switchable)")
class PGD(IFGSM):
    """PGD: ``PGD(*, eps, steps=10, step_size=None, norm="linf", restarts=1, random_start=True, eval_every=0)``.

    Starts at a uniformly random point of the ball unless ``random_start=False``;
    pass ``generator=`` to :meth:`run` for reproducible starts.
    """

    name = "pgd"

    def __init__(self, *, eps: float, steps: int = 10, step_size: float | None = None,
                 norm: ThreatModel | str = ThreatModel.LINF, restarts: int = 1, random_start: bool = True,
                 eval_every: int = 0) -> None:
        super().__init__(eps=eps, steps=steps, step_size=step_size, norm=norm, restarts=restarts,
                         random_start=random_start, eval_every=eval_every)

    def default_step_size(self) -> float:
        return 2.5 * self.eps / self.steps
