"""Run torchattacks' classifier attacks on IQA models, immune to the score's scale.

torchattacks attacks a classifier ``x -> logits`` by raising the cross-entropy of the given
labels (untargeted mode).  :class:`IQAClassifier` turns a quality score s(x) into two logits

    u(x) = clamp_st( sign * (s(x) - a) / w ),      z(x) = [m, u(x)],      label 0,
    CE(z, 0) = softplus(u(x) - m),

strictly increasing in sign * s.  ``sign`` follows the metric's ``lower_better`` so that
``Target.INCREASE`` raises *quality* for every metric.  The objective is normalised so that no
attack depends on the score's scale or offset:

* ``w`` is the width of the metric's ``score_range`` (a 0-100 score and a 0-1 score give the
  same u); ``a`` is the image's own clean score while :func:`run_torchattack` runs (so u = 0
  at the start of every image), else the middle of the range;
* ``clamp_st`` limits the *value* of u to [-10, 10] but passes its gradient unchanged
  (straight-through), so softplus' (= sigmoid(u - m) >= 4.5e-5 for m = 0) never underflows:
  without it, a large margin or score makes ``exp(u - m)`` vanish and L2 attacks (PGDL2,
  whose step is grad / (|grad| + 1e-10)) and sign attacks (BIM: sign(0) = 0) silently stop.

So every sign-gradient and normalised-gradient attack takes the steps of gradient ascent on
sign * s.  :func:`run_torchattack` runs an attack and returns its adversarial images; attacks
whose ``forward`` keeps only "label-flipped" images (APGD, Square: they treat an image whose
argmax is not the label as done, and otherwise return the clean image) are run through their
``attack_single_run``, which keeps the best iterate (APGD: highest loss; Square: lowest
margin, with a class-0 logit no score reaches).  :data:`SUPPORTED` lists the attacks that apply to a
differentiable (or query) objective; the others (boundary and success-based attacks such as
CW, DeepFool, FAB, and TPGD's symmetric KL objective) are refused with the reason.

For FR models the reference is bound at construction.  A single reference (batch 1) broadcasts
to any batch; a per-image reference batch requires the attack to query the full batch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from robustbench_iqa.attacks.objective import ScoreFn, Target, as_target
from robustbench_iqa.errors import InputError

CLAMP = 10.0
"""Bound on the value of the normalised score u (its gradient passes unchanged)."""
NEVER_FLIPS = 1e4
"""The class-0 logit while Square runs: no clamped u reaches it, so no image counts as done."""

SUPPORTED: dict[str, str] = {
    **{name: "forward" for name in (
        "FGSM", "BIM", "RFGSM", "PGD", "EOTPGD", "FFGSM", "MIFGSM", "UPGD", "DIFGSM", "TIFGSM",
        "NIFGSM", "SINIFGSM", "VMIFGSM", "VNIFGSM", "PGDL2", "PIFGSM", "PIFGSMPP")},
    **{name: "forward; one image at a time with per-image references (it queries copies of each image)"
       for name in ("PGDRS", "PGDRSL2", "SPSA")},
    "APGD": "best iterate of attack_single_run (loss='ce')",
    "Square": "best iterate of attack_single_run (loss='margin')",
}
"""torchattacks attacks that ascend a differentiable (or queried) objective, and how they run."""

REFUSED: dict[str, str] = {
    "TPGD": "its KL objective pushes away from the clean prediction in either direction",
    "APGDT": "its targeted DLR loss needs at least 3 classes",
    "CW": "it returns only images whose label flipped, with the smallest L2 change",
    "DeepFool": "it searches the nearest decision boundary, not a higher score",
    "SparseFool": "it searches the nearest decision boundary, not a higher score",
    "FAB": "it searches the nearest decision boundary, not a higher score",
    "EADL1": "it returns only images whose label flipped",
    "EADEN": "it returns only images whose label flipped",
    "OnePixel": "it stops at the first label flip",
    "Pixle": "it stops at the first label flip",
    "JSMA": "it targets other classes of a multi-class model",
    "AutoAttack": "it keeps only label-flipped images of its members; run APGD or Square instead",
    "MultiAttack": "it keeps only label-flipped images of its members",
    "GN": "it adds random noise and ascends no objective",
    "VANILA": "it returns the clean images",
    "LGV": "it first trains surrogate models with SGD on a data loader",
    "Jitter": "it divides the logits by their largest magnitude, which leaves a two-logit score "
              "no gradient but its own noise",
}


class _StraightThroughClamp(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, bound: float) -> torch.Tensor:  # noqa: D102
        return u.clamp(-bound, bound)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: D102
        return grad, None


class IQAClassifier(nn.Module):
    """An IQA score as a two-logit classifier for torchattacks (see the module docstring).

    Args:
        score_fn: the IQA model (or any ``(x, ref) -> (B,)`` callable / module).
        lower_better: the metric's orientation (default: ``score_fn.lower_better`` if present).
        target: ``increase`` or ``decrease`` quality.
        ref: reference image(s) for FR models, fixed during the attack.
        score_range: ``(lo, hi)`` whose width normalises the score (default: ``score_fn.score_range``;
            give one for a metric with an open range).
        margin: m, the constant logit of class 0 (0 for gradient attacks).
    """

    anchor: torch.Tensor | None

    def __init__(
        self, score_fn: ScoreFn, *, lower_better: bool | None = None, target: Target | str = Target.INCREASE,
        ref: torch.Tensor | None = None, score_range: tuple[float, float] | None = None, margin: float = 0.0,
    ) -> None:
        super().__init__()
        t = as_target(target)
        if t is Target.TOWARD:
            raise InputError("the torchattacks adapter supports only 'increase' and 'decrease' targets")
        if lower_better is None:
            lower_better = bool(getattr(score_fn, "lower_better", False))
        lo, hi = score_range if score_range is not None else getattr(score_fn, "score_range", (None, None))
        if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)) or not hi > lo:
            raise InputError(f"the torchattacks adapter normalises the score by its range; got {(lo, hi)}: "
                             "pass score_range=(lo, hi), a typical spread of the metric's scores")
        if not math.isfinite(margin):
            raise InputError(f"margin must be finite, got {margin!r}")
        self.score_fn = score_fn
        self.sign = 1.0 if (t is Target.INCREASE) != bool(lower_better) else -1.0
        self.center, self.width = (float(lo) + float(hi)) / 2, float(hi) - float(lo)
        self.margin = float(margin)
        self.anchor = None
        self.register_buffer("ref", None if ref is None else ref.detach())
        self.training = False  # torchattacks then asks for eval mode, which train() below keeps to itself
        if not isinstance(score_fn, nn.Module) or next(score_fn.parameters(), None) is None:
            # torchattacks reads the device from the first parameter.
            self._anchor_param = nn.Parameter(torch.zeros(0), requires_grad=False)

    def train(self, mode: bool = True) -> IQAClassifier:
        """Set this wrapper's flag only: the IQA model's train/eval mode stays the caller's.

        torchattacks switches its model's mode around every attack and, for a model it found in
        training mode, calls ``train()`` afterwards; passed on, that would leave batch-norm
        layers of an IQA model in training mode (updating running statistics) after the attack.
        """
        self.training = bool(mode)
        return self

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

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The raw score s(x) (B,), with the bound reference."""
        return self.score_fn(x, self._ref_for(x)).reshape(-1)

    def normalised(self, x: torch.Tensor) -> torch.Tensor:
        """u(x) = clamp_st(sign * (s(x) - a) / w) (B,)."""
        s = self.score(x)
        a = self.anchor if self.anchor is not None and self.anchor.shape == s.shape else self.center
        u = self.sign * (s - a) / self.width
        return _StraightThroughClamp.apply(u, CLAMP)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.normalised(x)
        return torch.stack([torch.full_like(u, self.margin), u], dim=1)

    @staticmethod
    def labels(x: torch.Tensor) -> torch.Tensor:
        """The fixed labels (all 0) to pass to a torchattacks attack."""
        return torch.zeros(x.shape[0], dtype=torch.long, device=x.device)

    @contextmanager
    def running(self, *, anchor: torch.Tensor | None, margin: float) -> Iterator[None]:
        """Anchor u at the clean scores and set the margin for one attack run, then restore."""
        old = (self.anchor, self.margin)
        self.anchor, self.margin = anchor, margin
        try:
            yield
        finally:
            self.anchor, self.margin = old


def run_torchattack(attack: Any, x: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
    """Run the torchattacks ``attack`` (built on an :class:`IQAClassifier`) on the images ``x``
    and return its adversarial images (the best iterate where the attack keeps one).

    u is anchored at each image's clean score.  An image the attack made worse (a random
    start it never recovered from) is returned clean: the result is never below the clean
    score in the wanted direction.  torchattacks' own random draws (random starts, Square's
    squares, noise) come from the global RNG, which is forked and seeded with ``seed`` so the
    caller's RNG state is left as it was.
    """
    clf = getattr(attack, "model", None)
    if not isinstance(clf, IQAClassifier):
        raise InputError("run_torchattack needs an attack built on an IQAClassifier "
                         f"(torchattacks.X(IQAClassifier(model), ...)), got a model of type {type(clf).__name__}")
    name = type(attack).__name__
    if name not in SUPPORTED:
        why = REFUSED.get(name, "it is not known to ascend a differentiable objective")
        raise InputError(f"torchattacks.{name} does not apply to an IQA score: {why}; "
                         f"supported: {', '.join(sorted(SUPPORTED))}")
    x = x.detach().to(attack.device)
    ref: torch.Tensor | None = clf.ref  # type: ignore[assignment]
    if ref is not None and ref.dim() == 4 and ref.shape[0] > 1 and "one image at a time" in SUPPORTED[name]:
        if ref.shape[0] != x.shape[0]:
            raise InputError(f"{ref.shape[0]} references bound for {x.shape[0]} images")
        outs = []
        try:
            for i in range(x.shape[0]):
                clf.ref = ref[i : i + 1]
                outs.append(run_torchattack(attack, x[i : i + 1], seed=seed + i))
        finally:
            clf.ref = ref
        return torch.cat(outs)
    y = clf.labels(x)
    with torch.no_grad():
        clean = clf.score(x)
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if name == "APGD":
            if attack.loss != "ce":
                raise InputError(f"APGD on an IQA score needs loss='ce' (got {attack.loss!r}; DLR needs 3+ classes)")
            with clf.running(anchor=clean, margin=0.0):
                best, *_ = attack.attack_single_run(x, y)
        elif name == "Square":
            if attack.loss != "margin":
                raise InputError(f"Square on an IQA score needs loss='margin' (got {attack.loss!r})")
            attack.init_hyperparam(x)
            with clf.running(anchor=clean, margin=NEVER_FLIPS):
                _, best = attack.attack_single_run(x, y)
        else:
            with clf.running(anchor=clean, margin=0.0):
                best = attack(x, y)
    best = best.detach()
    with torch.no_grad():
        worse = clf.sign * (clf.score(best) - clean) < 0
    return torch.where(worse.view(-1, 1, 1, 1), x, best)
