"""A perceptually constrained attack: the perturbation hides in textured regions.

Changes are far less visible in busy texture than in flat areas (the masking
idea that Korhonen & You, QoEVMA 2022, also use; their attack, a different one,
is :mod:`robustbench_iqa.attacks.korhonen`), so the perturbation is weighted by a
local-activity mask.  Here the mask is the local standard deviation of the luminance
Y = 0.299 R + 0.587 G + 0.114 B over a k x k window,

    sigma_loc(p) = sqrt( E_k[Y^2](p) - E_k[Y](p)^2 ),    M = (sigma_loc / max_p sigma_loc)^gamma,

computed once on the clean image, in [0, 1] per image.  Each step follows
M * direction(M * grad) (flat regions receive ~nothing).  For Linf the
per-pixel budget is eps * M (so |d| <= eps everywhere and ~0 in flat areas);
for L2 the total budget is eps as usual.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from robustbench_iqa.attacks.gradient import IFGSM, _bcast
from robustbench_iqa.attacks.registry import register_attack
from robustbench_iqa.attacks.threat import ThreatModel, normalized_direction, project
from robustbench_iqa.errors import InputError

_LUMA = (0.299, 0.587, 0.114)


def texture_mask(x: torch.Tensor, *, window: int = 5, power: float = 1.0) -> torch.Tensor:
    """Local-activity mask (B, 1, H, W) in [0, 1]: normalized local std of the luminance."""
    if window < 1 or window % 2 == 0:
        raise InputError(f"window must be an odd positive integer, got {window!r}")
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).reshape(1, 3, 1, 1)
    y = (x * w).sum(dim=1, keepdim=True)
    pad = window // 2
    yp = F.pad(y, (pad, pad, pad, pad), mode="replicate")
    mean = F.avg_pool2d(yp, window, stride=1)
    mean_sq = F.avg_pool2d(yp * yp, window, stride=1)
    std = (mean_sq - mean * mean).clamp_min(0).sqrt()
    peak = std.reshape(std.shape[0], -1).amax(dim=1).clamp_min(1e-12)
    return (std / _bcast(peak, std)).pow(power)


@register_attack("texture", reference="local-std texture masking (Korhonen & You's attack is 'korhonen')",
                 description="I-FGSM whose steps are masked by local texture (less visible)")
class TextureMaskedAttack(IFGSM):
    """Texture-masked I-FGSM.

    ``TextureMaskedAttack(*, eps, steps=10, step_size=None, norm="linf", window=5, power=1.0,
    restarts=1, random_start=False, eval_every=0)``.
    """

    name = "texture"

    def __init__(self, *, eps: float, steps: int = 10, step_size: float | None = None,
                 norm: ThreatModel | str = ThreatModel.LINF, window: int = 5, power: float = 1.0,
                 restarts: int = 1, random_start: bool = False, eval_every: int = 0) -> None:
        super().__init__(eps=eps, steps=steps, step_size=step_size, norm=norm, restarts=restarts,
                         random_start=random_start, eval_every=eval_every)
        if not (power > 0):
            raise InputError(f"power must be > 0, got {power!r}")
        self.window, self.power = int(window), float(power)
        texture_mask(torch.zeros(1, 3, 1, 1), window=self.window)  # checks the window now

    def init_state(self, x0: torch.Tensor, ref: torch.Tensor | None) -> dict[str, Any]:
        return {"mask": texture_mask(x0, window=self.window, power=self.power)}

    def step(self, x: torch.Tensor, grad: torch.Tensor, alpha: torch.Tensor,
             state: dict[str, Any]) -> torch.Tensor:
        m = state["mask"]
        return x + _bcast(alpha, x) * m * normalized_direction(m * grad, self.norm)

    def project(self, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        if self.norm is ThreatModel.LINF:
            e = _bcast(eps, x) * state["mask"]
            x = torch.min(torch.max(x, x0 - e), x0 + e)
        return project(x, x0, eps, self.norm)
