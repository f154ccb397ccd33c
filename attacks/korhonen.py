"""Korhonen & You's perceptual attack on blind IQA models (QoEVMA 2022).

J. Korhonen and J. You, "Adversarial Attacks Against Blind Image Quality
Assessment Models", QoEVMA '22 (Sec. 3; the authors' ``generateAdversaryImage.m``).
The image is updated by Adam on the gradient of the quality loss, multiplied
pixel-wise by a *spatial activity map* of the clean image, so the changes go
where texture hides them:

    Y       = luminance of the clean image (ITU-R BT.601; only ratios matter here)
    E       = (Y * S)^2 + (Y * S^T)^2,  S = [-1 -2 -1; 0 0 0; 1 2 1] / 8   (Sobel energy)
    E       = 0 on the one-pixel border, then E / max E   (all ones if max E = 0)
    A       = grey dilation of E by the 5x5 disc  [0 1 1 1 0; 1 1 1 1 1; ...; 0 1 1 1 0]
    x_{t+1} = x_t + Adam_t(A * grad_x g(S(x_t)))      (ascent of the gain; beta = 0.9, 0.999)

The authors run 20-100 Adam steps with a learning rate of 0.1-5 (in 0-255 units)
on an unbounded image and keep the iterate of lowest loss.  Here the suite's loop
adds the budget: every iterate is projected onto the eps-ball of the threat model
and the [0, 1] box, and the best iterate is kept per image
(:class:`~robustbench_iqa.attacks.base.GradientAttack`).

How it differs from the texture-masked attack
(:class:`~robustbench_iqa.attacks.perceptual.TextureMaskedAttack`), which is
*not* this attack: that one weighs a sign step by a local-standard-deviation
mask M, and bounds each pixel by eps * M; this one weighs the *gradient* by a
dilated Sobel-energy map and takes Adam steps, which normalize every pixel's
update by its own gradient history, so the map acts through where it is zero
(flat regions receive nothing) rather than through its magnitude, and the
budget is the plain eps-ball.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from robustbench_iqa.attacks.base import GradientAttack
from robustbench_iqa.attacks.registry import register_attack
from robustbench_iqa.attacks.threat import ThreatModel

_LUMA = (0.299, 0.587, 0.114)
_SOBEL = ((-1.0, -2.0, -1.0), (0.0, 0.0, 0.0), (1.0, 2.0, 1.0))
_DISC = ((0, 1, 1, 1, 0), (1, 1, 1, 1, 1), (1, 1, 1, 1, 1), (1, 1, 1, 1, 1), (0, 1, 1, 1, 0))
BETA1, BETA2, ADAM_EPS = 0.9, 0.999, 1e-8


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def spatial_activity_map(x: torch.Tensor) -> torch.Tensor:
    """Korhonen & You's map (B, 1, H, W) in [0, 1]: dilated, normalized Sobel energy of the luminance."""
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    y = (x * w).sum(dim=1, keepdim=True)
    s = torch.tensor(_SOBEL, dtype=x.dtype, device=x.device).reshape(1, 1, 3, 3) / 8
    yp = F.pad(y, (1, 1, 1, 1), mode="replicate")
    e = F.conv2d(yp, s).pow(2) + F.conv2d(yp, s.transpose(2, 3)).pow(2)
    border = torch.zeros_like(e, dtype=torch.bool)
    border[..., 1:-1, 1:-1] = True
    e = torch.where(border, e, torch.zeros_like(e))
    peak = e.reshape(e.shape[0], -1).amax(dim=1)
    e = torch.where(_bcast(peak > 0, e), e / _bcast(peak.clamp_min(1e-30), e), torch.ones_like(e))
    # Grey dilation by the 5x5 disc: the maximum over the disc's support.
    disc = torch.tensor(_DISC, dtype=torch.bool, device=x.device).reshape(-1)
    patches = F.unfold(F.pad(e, (2, 2, 2, 2), value=0.0), 5)  # (B, 25, H*W); E >= 0, so 0-padding is neutral
    dilated = patches[:, disc].amax(dim=1)
    return dilated.reshape_as(e)


@register_attack("korhonen", threat=("linf", "l2"), gradient=True,
                 reference="Korhonen & You 2022 (QoEVMA), with an eps-ball budget",
                 description="Adam on the gradient weighted by a Sobel spatial-activity map")
class KorhonenAttack(GradientAttack):
    """``KorhonenAttack(*, eps, steps=20, step_size=None, norm="linf", restarts=1, random_start=False, eval_every=0)``.

    ``step_size`` is Adam's learning rate (pixel units); default 2.5 eps / steps.
    """

    name = "korhonen"

    def __init__(self, *, eps: float, steps: int = 20, step_size: float | None = None,
                 norm: ThreatModel | str = ThreatModel.LINF, restarts: int = 1, random_start: bool = False,
                 eval_every: int = 0) -> None:
        super().__init__(eps=eps, steps=steps, step_size=step_size, norm=norm, restarts=restarts,
                         random_start=random_start, eval_every=eval_every)

    def default_step_size(self) -> float:
        return 2.5 * self.eps / self.steps

    def init_state(self, x0: torch.Tensor, ref: torch.Tensor | None) -> dict[str, Any]:
        return {"map": spatial_activity_map(x0), "m": torch.zeros_like(x0), "v": torch.zeros_like(x0), "t": 0}

    def step(self, x: torch.Tensor, grad: torch.Tensor, alpha: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        g = grad * state["map"]
        state["t"] += 1
        t = state["t"]
        state["m"] = BETA1 * state["m"] + (1 - BETA1) * g
        state["v"] = BETA2 * state["v"] + (1 - BETA2) * g * g
        m_hat = state["m"] / (1 - BETA1 ** t)
        v_hat = state["v"] / (1 - BETA2 ** t)
        return x + _bcast(alpha, x) * m_hat / (v_hat.sqrt() + ADAM_EPS)
