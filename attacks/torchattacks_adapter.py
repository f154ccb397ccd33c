"""Run torchattacks' classifier attacks unchanged on IQA models.

torchattacks attacks a classifier ``x -> logits`` by raising the cross-entropy
of the given labels (untargeted mode).  :class:`IQAClassifier` turns a quality
score s(x) into two logits

    z(x) = [m, k * sign * s(x)],     label 0,
    CE(z, 0) = log(1 + exp(k * sign * s(x) - m)) = softplus(k * sign * s(x) - m),

which is strictly increasing in sign * s.  So raising the loss raises s (sign = +1),
or lowers it (sign = -1), and the input gradient of the loss has the same sign
pattern as sign * grad s: Linf sign-gradient attacks (FGSM, BIM, PGD) take exactly
the steps of :mod:`robustbench_iqa.attacks.gradient`.  ``sign`` follows the metric's
``lower_better`` so that ``Target.INCREASE`` raises *quality* for every metric.
``k`` (``scale``) only changes the loss's curvature (and the scale of L2 gradients
that are normalized anyway).

The margin m (default 0) matters for attacks that stop once the predicted label
flips (APGD, Square, CW, DeepFool treat an image whose argmax is not 0 as
already adversarial and leave it alone).  For them pass a margin above the largest
reachable k * sign * s (e.g. k * (score_range[1] + 1) for a higher-better score),
so the label never flips and they spend their whole budget; keep k * score
moderate so exp(k * sign * s - m) does not underflow.

For FR models the reference is bound at construction.  A single reference
(batch 1) broadcasts to any batch; a per-image reference batch requires the
attack to query the full batch (query-based attacks such as Square work on
subsets and need a single reference or batch size 1).
"""

from __future__ import annotations

import torch
from torch import nn

from robustbench_iqa.attacks.objective import ScoreFn, Target, as_target
from robustbench_iqa.errors import InputError


class IQAClassifier(nn.Module):
    """An IQA score as a two-logit classifier for torchattacks (see module doc).

    Args:
        score_fn: the IQA model (or any ``(x, ref) -> (B,)`` callable / module).
        lower_better: the metric's orientation (default: ``score_fn.lower_better`` if present).
        target: ``increase`` or ``decrease`` quality.
        ref: reference image(s) for FR models, fixed during the attack.
        scale: k, logit scale.
        margin: m, the constant logit of class 0.
    """

    def __init__(
        self, score_fn: ScoreFn, *, lower_better: bool | None = None,
        target: Target | str = Target.INCREASE, ref: torch.Tensor | None = None, scale: float = 1.0,
        margin: float = 0.0,
    ) -> None:
        super().__init__()
        t = as_target(target)
        if t is Target.TOWARD:
            raise InputError("the torchattacks adapter supports only 'increase' and 'decrease' targets")
        if lower_better is None:
            lower_better = bool(getattr(score_fn, "lower_better", False))
        if not (scale > 0):
            raise InputError(f"scale must be > 0, got {scale!r}")
        self.score_fn = score_fn
        self.sign = 1.0 if (t is Target.INCREASE) != bool(lower_better) else -1.0
        self.scale = float(scale)
        self.margin = float(margin)
        self.register_buffer("ref", None if ref is None else ref.detach())
        if not isinstance(score_fn, nn.Module) or next(score_fn.parameters(), None) is None:
            # torchattacks reads the device from the first parameter.
            self._anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def _ref_for(self, x: torch.Tensor) -> torch.Tensor | None:
        ref: torch.Tensor | None = self.ref  # type: ignore[assignment]
        if ref is None:
            return None
        if ref.dim() == 3:
            ref = ref.unsqueeze(0)
        if ref.shape[0] == 1:
            return ref.expand(x.shape[0], -1, -1, -1)
        if ref.shape[0] != x.shape[0]:
            raise InputError(
                f"the bound reference batch ({ref.shape[0]}) does not match the queried batch ({x.shape[0]}); "
                "bind a single reference or attack one image at a time"
            )
        return ref

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.score_fn(x, self._ref_for(x)).reshape(-1)
        z = self.scale * self.sign * s
        return torch.stack([torch.full_like(z, self.margin), z], dim=1)

    @staticmethod
    def labels(x: torch.Tensor) -> torch.Tensor:
        """The fixed labels (all 0) to pass to a torchattacks attack."""
        return torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
