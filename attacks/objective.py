"""What an attack maximizes: a differentiable score and the wanted direction.

An objective is a score function ``score_fn(x, ref) -> (B,)`` (an
:class:`~robustbench_iqa.models.base.IQAModel`, or a defense's differentiable
surrogate such as the EOT mean) plus the metric's ``lower_better``.  The attack
maximizes the per-image *gain* g(s):

* ``Target.INCREASE`` (raise the apparent quality): g = s, or -s for a
  lower-better metric (pyiqa metadata), so one attack works for every metric;
* ``Target.DECREASE``: the opposite;
* ``Target.TOWARD``: g = -(s - t)^2 for a target score t.

``eval_fn`` (default: ``score_fn`` without gradients) gives the scores that are
recorded as ``clean_score`` / ``adv_score``; a randomized defense records its
defended prediction there instead of the surrogate it is attacked through.
Attacks select their best iterate with these recorded scores: ``eval_fn`` must be
deterministic in x (a randomized defense reseeds its generator at every call,
common random numbers; :class:`robustbench_iqa.attacks.eot.DefendedScore`), and
``eval_fn=None`` declares ``score_fn`` itself deterministic, so the scores of the
attack's own forward passes can be recorded without evaluating again.

A score function that averages random draws (:class:`robustbench_iqa.attacks.eot.EOTScore`)
may offer ``with_draws(x, ref) -> (scores (B,), draws (B, n))``;
:meth:`Objective.surrogate` then returns the draws too, for the attack-strength
checks (:mod:`robustbench_iqa.attacks.checks`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import torch

from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import IQAModel
from robustbench_iqa.validation import check_finite

ScoreFn = Callable[[torch.Tensor, "torch.Tensor | None"], torch.Tensor]


class Target(StrEnum):
    """Direction of the attack, in terms of *quality* (not of the raw score)."""

    INCREASE = "increase"
    DECREASE = "decrease"
    TOWARD = "toward"


def as_target(target: Target | str) -> Target:
    try:
        return Target(target.lower() if isinstance(target, str) else target)
    except ValueError:
        raise InputError(f"unknown attack target {target!r}; use increase, decrease or toward") from None


@dataclass(frozen=True)
class Objective:
    """A score function, its orientation and the attack's goal (see module doc)."""

    score_fn: ScoreFn
    lower_better: bool = False
    target: Target = Target.INCREASE
    target_score: float | None = None
    eval_fn: ScoreFn | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "target", as_target(self.target))
        if self.target is Target.TOWARD and self.target_score is None:
            raise InputError("target 'toward' needs a target_score")
        if self.target_score is not None:  # NaN would stop the attack at once with a "gain" of 0
            object.__setattr__(self, "target_score", check_finite(self.target_score, name="target_score"))

    @classmethod
    def from_model(
        cls, model: IQAModel, *, target: Target | str = Target.INCREASE, target_score: float | None = None
    ) -> Objective:
        """Attack an IQA model's own score, with its ``lower_better`` metadata."""
        return cls(model, lower_better=bool(model.lower_better), target=as_target(target),
                   target_score=target_score)

    def gain(self, scores: torch.Tensor) -> torch.Tensor:
        """Per-image quantity the attack maximizes, (B,) -> (B,)."""
        if self.target is Target.TOWARD:
            return -(scores - float(self.target_score)).pow(2)  # type: ignore[arg-type]
        raise_quality = self.target is Target.INCREASE
        sign = 1.0 if raise_quality != self.lower_better else -1.0
        return sign * scores

    @property
    def deterministic(self) -> bool:
        """Whether the attacked scores are the recorded ones (no separate ``eval_fn``)."""
        return self.eval_fn is None

    def surrogate(self, x: torch.Tensor, ref: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The attacked (differentiable) scores (B,), and the per-draw scores (B, n) if the score has draws."""
        with_draws = getattr(self.score_fn, "with_draws", None)
        if callable(with_draws):
            scores, draws = with_draws(x, ref)
            return scores.reshape(-1), draws
        return self.score_fn(x, ref).reshape(-1), None

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        """The recorded score of each image, (B,)."""
        fn = self.eval_fn if self.eval_fn is not None else self.score_fn
        return fn(x, ref).detach().reshape(-1)
