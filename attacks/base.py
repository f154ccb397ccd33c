"""The projected-gradient loop, written once (foolbox 3 ``BaseGradientDescent.run``).

Every gradient attack of the suite is

    x_0     = start(x, eps)                                  (x itself, or a random point)
    x_{t+1} = clip_[0,1]( Proj_{B(x, eps)}( step(x_t, grad_x g(S(x_t)), t) ) ),  t < T

where S is the attacked score and g the objective's gain (see
:mod:`robustbench_iqa.attacks.objective`).  Subclasses supply ``start``, ``step`` and
(optionally) ``project``.  For FR models only the distorted image is attacked;
the reference is passed unchanged to every call of the score function.

An image stops early when its gradient vanishes (nothing more to do; AutoAttack
``checks.py`` warns about zero gradients) or, for ``Target.TOWARD``, once its
score is within ``tol`` of the target; ``iterations`` records the steps each
image actually took.  The final iterate is returned (as I-FGSM/BIM do).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from robustbench_iqa.attacks.objective import Objective, Target
from robustbench_iqa.attacks.threat import (
    ThreatModel,
    as_threat_model,
    check_eps,
    norms,
    per_image_eps,
    project,
)
from robustbench_iqa.errors import InputError
from robustbench_iqa.registry import checked_keywords
from robustbench_iqa.validation import check_finite_scores, check_images


@dataclass(frozen=True)
class AttackRecord:
    """What an attack did to one image."""

    clean_score: float
    adv_score: float
    l2: float
    linf: float
    iterations: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AttackResult:
    """The adversarial batch (B, 3, H, W) and one :class:`AttackRecord` per image."""

    adv: torch.Tensor
    records: list[AttackRecord]

    @property
    def clean_scores(self) -> torch.Tensor:
        return torch.tensor([r.clean_score for r in self.records])

    @property
    def adv_scores(self) -> torch.Tensor:
        return torch.tensor([r.adv_score for r in self.records])


def check_steps(steps: int) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    return steps


class GradientAttack(ABC):
    """Base class: settings plus the loop; see the module docstring.

    Args:
        eps: budget in pixel units (a float; ``run(eps=...)`` may override it
            per image with a (B,) tensor, e.g. a certified radius eps_x).
        steps: gradient steps T.
        step_size: alpha per step; ``None`` uses :meth:`default_step_size`.
        norm: threat model, ``"linf"`` or ``"l2"``.
        tol: early-stop tolerance for ``Target.TOWARD``.
    """

    name = "gradient-attack"

    def __init__(
        self, *, eps: float, steps: int = 10, step_size: float | None = None,
        norm: ThreatModel | str = ThreatModel.LINF, tol: float = 1e-4,
    ) -> None:
        self.eps = check_eps(eps)
        self.steps = check_steps(steps)
        if step_size is not None and not (step_size > 0):
            raise InputError(f"step_size must be > 0, got {step_size!r}")
        self.step_size = step_size
        self.norm = as_threat_model(norm)
        self.tol = float(tol)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eps={self.eps:g}, steps={self.steps}, "
                f"step_size={self.step_size}, norm={self.norm.value!r})")

    # ----------------------------------------------------- pieces to override
    def default_step_size(self) -> float:
        return self.eps / self.steps

    def alpha(self, eps: torch.Tensor) -> torch.Tensor:
        """Per-image step size: the set one, or scaled with each image's budget."""
        if self.step_size is not None:
            return torch.full_like(eps, self.step_size)
        return eps * (self.default_step_size() / self.eps if self.eps > 0 else 1.0 / self.steps)

    def start(self, x0: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Starting point (default: the clean image)."""
        return x0.clone()

    def init_state(self, x0: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-run state carried between steps (e.g. momentum)."""
        return {}

    @abstractmethod
    def step(
        self, x: torch.Tensor, grad: torch.Tensor, alpha: torch.Tensor, state: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """One ascent step from ``x`` with gradient ``grad`` of the gain; not yet projected."""

    def project(self, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return project(x, x0, eps, self.norm)

    # -------------------------------------------------------------- the loop
    @checked_keywords
    def run(
        self, objective: Objective, x: torch.Tensor, ref: torch.Tensor | None = None, *,
        eps: float | torch.Tensor | None = None, generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> AttackResult:
        """Attack a batch; returns the adversarial images and per-image records."""
        x0 = check_images(x).detach()
        if ref is not None:
            ref = check_images(ref, name="ref").detach()
        budget = per_image_eps(self.eps if eps is None else eps, x0)
        alpha = self.alpha(budget)
        clean = check_finite_scores(objective.evaluate(x0, ref), what="score of the clean images")
        xt = self.start(x0, budget, generator)
        xt = self.project(xt, x0, budget).detach()
        state = self.init_state(x0)
        active = torch.ones(x0.shape[0], dtype=torch.bool, device=x0.device)
        iterations = torch.zeros(x0.shape[0], dtype=torch.long)
        for _ in tqdm(range(self.steps), desc=self.name, leave=False, disable=not progress):
            xt.requires_grad_(True)
            scores = objective.score_fn(xt, ref).reshape(-1)
            check_finite_scores(scores.detach(), what="attacked score")
            (grad,) = torch.autograd.grad(objective.gain(scores).sum(), xt)
            xt = xt.detach()
            with torch.no_grad():
                active &= grad.reshape(grad.shape[0], -1).abs().amax(dim=1) > 0
                if objective.target is Target.TOWARD:
                    active &= (scores.detach() - float(objective.target_score)).abs() > self.tol  # type: ignore[arg-type]
                if not bool(active.any()):
                    break
                moved = self.project(self.step(xt, grad, alpha, state), x0, budget)
                keep = active.reshape(-1, 1, 1, 1)
                xt = torch.where(keep, moved, xt)
                iterations += active.cpu().long()
        adv = xt.detach()
        adv_scores = objective.evaluate(adv, ref)
        delta = adv - x0
        l2, linf = norms(delta, ThreatModel.L2), norms(delta, ThreatModel.LINF)
        records = [
            AttackRecord(float(c), float(a), float(d2), float(di), int(it))
            for c, a, d2, di, it in zip(clean.cpu(), adv_scores.cpu(), l2.cpu(), linf.cpu(), iterations)
        ]
        return AttackResult(adv, records)

    __call__ = run
