"""Attacks on quality scores: the records, the result, and the projected-gradient loop written once.

Every attack is an :class:`Attack`,
``run(objective, x, ref=None, *, eps=None, generator=None, progress=False) -> AttackResult``;
for FR models only the distorted image is attacked and the reference is passed
unchanged to every call of the score function.

**The gradient loop** (foolbox 3 ``BaseGradientDescent.run``).  For restarts r = 1..R,

    x_0^r     = x                       (r = 1 without random start)
              = start(x, eps)           (a random point of the ball: r = 1 with random start, and every r > 1)
    x_{t+1}^r = clip_[0,1]( Proj_{B(x, eps)}( step(x_t^r, grad_x g(S(x_t^r)), t) ) ),   t < T,

where S is the attacked score and g the objective's gain
(:mod:`robustbench_iqa.attacks.objective`).  Subclasses supply ``step`` and
optionally ``start``, ``project`` and ``init_state`` (per-restart state such as
momentum).  A later restart always starts at a random point: from x it would
repeat the first one.

**Best-iterate selection.**  Per image, the returned x' is the candidate with the
highest *recorded* gain among the clean image and the evaluated iterates; the
clean image wins ties, so x' is never worse than x in the recorded score
(``improvement`` = g(S(x')) - g(S(x)) >= 0).  Which iterates are candidates, and
so what the selection costs, depends on the objective:

* deterministic (``objective.eval_fn is None``): the forward pass that gives the
  gradient at x_t^r gives its recorded score, so every iterate x_0^r..x_T^r of every
  restart is a candidate at no extra cost.  Per batch: per restart T forward/backward
  passes and 1 forward pass for x_T^r; the clean score is the first forward pass's when
  the first restart starts at x (no random start), else 1 more forward pass.
* randomized (``eval_fn`` set, e.g. a defense's prediction with common random
  numbers, :class:`robustbench_iqa.attacks.eot.DefendedScore`): the attacked
  surrogate is noisy, so candidates are scored with ``eval_fn`` only: the last
  iterate of every restart and, with ``eval_every = k > 0``, every k-th iterate.
  ``eval_fn`` runs 1 + R (1 + floor((T - 1) / k)) times per batch (1 + R with
  k = 0, the default); each run costs what the defense's prediction costs
  (e.g. ``eval_n`` noise draws).

**Early stop** per image: a gradient that vanishes everywhere (nothing more to
do; counted in ``zero_grad_steps`` and flagged by :mod:`robustbench_iqa.attacks.checks`),
or, for ``Target.TOWARD``, a score within ``tol`` of the target.  Non-finite
gradient entries are replaced by 0 and counted (``nonfinite_grad_steps``).
``iterations`` counts the steps each image took over all restarts.

**EOT agreement.**  When the score averages noise draws (``with_draws``), the
first step of the first restart also takes the gradients of the means of two
disjoint halves of the draws (2 extra backward passes per run) and records the
per-draw gradient spread (:func:`robustbench_iqa.attacks.checks.split_half_spread`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from robustbench_iqa.attacks.checks import ImageCheck, Thresholds, check_records, split_half_spread
from robustbench_iqa.attacks.objective import Objective, Target
from robustbench_iqa.attacks.threat import (
    ThreatModel,
    as_threat_model,
    check_eps,
    norms,
    per_image_eps,
    project,
    random_in_ball,
)
from robustbench_iqa.errors import InputError
from robustbench_iqa.registry import checked_keywords
from robustbench_iqa.validation import check_finite_scores, check_images


@dataclass(frozen=True)
class AttackRecord:
    """What an attack did to one image.

    ``improvement`` is the recorded gain of the returned image over the clean one,
    g(S(x')) - g(S(x)) in the objective's units; ``iterations`` the gradient steps
    (or, for query attacks, the queries) spent on it; ``evaluations`` the calls of
    the recorded score function that scored its candidates.  The remaining fields
    feed the attack-strength checks (:mod:`robustbench_iqa.attacks.checks`).
    """

    clean_score: float
    adv_score: float
    l2: float
    linf: float
    iterations: int
    improvement: float = 0.0
    evaluations: int = 0
    zero_grad_steps: int = 0
    nonfinite_grad_steps: int = 0
    eot_spread: float | None = None
    eot_draws: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AttackResult:
    """The adversarial batch (B, 3, H, W) and one :class:`AttackRecord` per image.

    ``checks`` are the attack-strength checks of every image (default thresholds).
    """

    adv: torch.Tensor
    records: list[AttackRecord]

    @property
    def clean_scores(self) -> torch.Tensor:
        return torch.tensor([r.clean_score for r in self.records])

    @property
    def adv_scores(self) -> torch.Tensor:
        return torch.tensor([r.adv_score for r in self.records])

    @property
    def improvements(self) -> torch.Tensor:
        return torch.tensor([r.improvement for r in self.records])

    @property
    def checks(self) -> list[ImageCheck]:
        return check_records(self.records)

    def checked(self, thresholds: Thresholds) -> list[ImageCheck]:
        """The checks under other thresholds."""
        return check_records(self.records, thresholds)


def check_steps(steps: int, *, what: str = "steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"{what} must be a positive integer, got {steps!r}")
    return steps


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


class Best:
    """Per-image best candidate so far (x, recorded score, gain); ties keep the earlier one."""

    def __init__(self, x: torch.Tensor, scores: torch.Tensor, gain: torch.Tensor) -> None:
        self.x, self.scores, self.gain = x.detach().clone(), scores.detach().clone(), gain.detach().clone()
        self.clean_scores, self.clean_gain = self.scores.clone(), self.gain.clone()

    def offer(self, x: torch.Tensor, scores: torch.Tensor, gain: torch.Tensor) -> None:
        better = gain.detach() > self.gain
        if bool(better.any()):
            self.x = torch.where(_bcast(better, x), x.detach(), self.x)
            self.scores = torch.where(better, scores.detach(), self.scores)
            self.gain = torch.where(better, gain.detach(), self.gain)

    def replace(self, x: torch.Tensor, scores: torch.Tensor, gain: torch.Tensor) -> None:
        """Make (x, scores, gain) the candidate of every image, better or not (a universal perturbation)."""
        self.x, self.scores, self.gain = x.detach().clone(), scores.detach().clone(), gain.detach().clone()

    @property
    def improvement(self) -> torch.Tensor:
        return self.gain - self.clean_gain


def build_result(
    x0: torch.Tensor, best: Best, iterations: torch.Tensor, *, evaluations: int,
    zero: torch.Tensor | None = None, nonfinite: torch.Tensor | None = None,
    eot_spread: torch.Tensor | None = None, eot_draws: int | None = None,
) -> AttackResult:
    """Records of every image from the best candidates and the counters of a run."""
    adv = best.x.detach()
    delta = adv - x0
    l2, linf = norms(delta, ThreatModel.L2), norms(delta, ThreatModel.LINF)
    b = x0.shape[0]
    zero = torch.zeros(b, dtype=torch.long) if zero is None else zero
    nonfinite = torch.zeros(b, dtype=torch.long) if nonfinite is None else nonfinite
    records = []
    for i in range(b):
        spread = None
        if eot_spread is not None:
            s = float(eot_spread[i])
            spread = None if math.isnan(s) else s
        records.append(AttackRecord(
            float(best.clean_scores[i]), float(best.scores[i]), float(l2[i]), float(linf[i]), int(iterations[i]),
            float(best.improvement[i]), int(evaluations), int(zero[i]), int(nonfinite[i]),
            spread, None if spread is None else eot_draws,
        ))
    return AttackResult(adv, records)


class Attack(ABC):
    """An attack on quality scores (see the module doc)."""

    name = "attack"

    @abstractmethod
    def run(
        self, objective: Objective, x: torch.Tensor, ref: torch.Tensor | None = None, *,
        eps: float | torch.Tensor | None = None, generator: torch.Generator | None = None,
        progress: bool = False, clean: torch.Tensor | None = None,
    ) -> AttackResult:
        """Attack a batch; returns the adversarial images and per-image records.

        ``clean``: the recorded scores of ``x`` (``objective.evaluate(x, ref)``) when the caller
        already has them, e.g. attacking one batch at several budgets; computed otherwise.
        """

    def __call__(
        self, objective: Objective, x: torch.Tensor, ref: torch.Tensor | None = None, *,
        eps: float | torch.Tensor | None = None, generator: torch.Generator | None = None,
        progress: bool = False, clean: torch.Tensor | None = None,
    ) -> AttackResult:
        return self.run(objective, x, ref, eps=eps, generator=generator, progress=progress, clean=clean)


def start_best(objective: Objective, x0: torch.Tensor, ref: torch.Tensor | None,
               clean: torch.Tensor | None = None) -> Best:
    """The clean image as the first candidate, with its recorded score (given, or evaluated here)."""
    if clean is None:
        clean = objective.evaluate(x0, ref)
    elif tuple(clean.reshape(-1).shape) != (x0.shape[0],):
        raise InputError(f"clean scores have shape {tuple(clean.shape)}; expected ({x0.shape[0]},)")
    clean = check_finite_scores(clean.detach().reshape(-1).to(x0.device), what="score of the clean images")
    return Best(x0, clean, objective.gain(clean))


def check_restarts(restarts: int) -> int:
    return check_steps(restarts, what="restarts")


def check_eval_every(eval_every: int) -> int:
    if isinstance(eval_every, bool) or not isinstance(eval_every, int) or eval_every < 0:
        raise InputError(f"eval_every must be an integer >= 0, got {eval_every!r}")
    return eval_every


class GradientAttack(Attack):
    """Base class: settings plus the loop; see the module docstring.

    Args:
        eps: budget in pixel units (a float; ``run(eps=...)`` may override it
            per image with a (B,) tensor, e.g. a certified radius eps_x).
        steps: gradient steps T per restart.
        step_size: alpha per step; ``None`` uses :meth:`default_step_size`.
        norm: threat model, ``"linf"`` or ``"l2"``.
        restarts: R; restarts after the first start at random points.
        random_start: whether the first restart starts at a random point of the ball.
        eval_every: for randomized objectives, also score every k-th iterate with
            the recorded evaluation (0: only the last iterate of each restart).
        tol: early-stop tolerance for ``Target.TOWARD``.
    """

    name = "gradient-attack"

    def __init__(
        self, *, eps: float, steps: int = 10, step_size: float | None = None,
        norm: ThreatModel | str = ThreatModel.LINF, restarts: int = 1, random_start: bool = False,
        eval_every: int = 0, tol: float = 1e-4,
    ) -> None:
        self.eps = check_eps(eps)
        self.steps = check_steps(steps)
        if step_size is not None and not (step_size > 0):
            raise InputError(f"step_size must be > 0, got {step_size!r}")
        self.step_size = step_size
        self.norm = as_threat_model(norm)
        self.restarts = check_restarts(restarts)
        if not isinstance(random_start, bool):
            raise InputError(f"random_start must be True or False, got {random_start!r}")
        self.random_start = random_start
        self.eval_every = check_eval_every(eval_every)
        self.tol = float(tol)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eps={self.eps:g}, steps={self.steps}, step_size={self.step_size}, "
                f"norm={self.norm.value!r}, restarts={self.restarts}, random_start={self.random_start})")

    # ----------------------------------------------------- pieces to override
    def default_step_size(self) -> float:
        return self.eps / self.steps

    def alpha(self, eps: torch.Tensor) -> torch.Tensor:
        """Per-image step size: the set one, or scaled with each image's budget."""
        if self.step_size is not None:
            return torch.full_like(eps, self.step_size)
        return eps * (self.default_step_size() / self.eps if self.eps > 0 else 1.0 / self.steps)

    def start(self, x0: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A random starting point: uniform in the ball (projected by the loop)."""
        return x0 + random_in_ball(x0, eps, self.norm, generator)

    def init_state(self, x0: torch.Tensor, ref: torch.Tensor | None) -> dict[str, Any]:
        """Per-restart state carried between steps (e.g. momentum); made before the start."""
        return {}

    @abstractmethod
    def step(
        self, x: torch.Tensor, grad: torch.Tensor, alpha: torch.Tensor, state: dict[str, Any]
    ) -> torch.Tensor:
        """One ascent step from ``x`` with gradient ``grad`` of the gain; not yet projected."""

    def project(self, x: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        return project(x, x0, eps, self.norm)

    # -------------------------------------------------------------- the loop
    @checked_keywords
    def run(
        self, objective: Objective, x: torch.Tensor, ref: torch.Tensor | None = None, *,
        eps: float | torch.Tensor | None = None, generator: torch.Generator | None = None,
        progress: bool = False, clean: torch.Tensor | None = None,
    ) -> AttackResult:
        """Attack a batch; returns the best iterate per image and its record (see the module doc)."""
        x0 = check_images(x).detach()
        if ref is not None:
            ref = check_images(ref, name="ref").detach()
        budget = per_image_eps(self.eps if eps is None else eps, x0)
        alpha = self.alpha(budget)
        # From x itself, the first gradient's forward pass scores the clean image: no separate pass.
        clean_from_first_step = clean is None and objective.deterministic and not self.random_start
        best = None if clean_from_first_step else start_best(objective, x0, ref, clean)
        evaluations = 1
        b = x0.shape[0]
        iterations = torch.zeros(b, dtype=torch.long)
        zero = torch.zeros(b, dtype=torch.long)
        nonfinite = torch.zeros(b, dtype=torch.long)
        spread: torch.Tensor | None = None
        draws_n: int | None = None
        with tqdm(total=self.restarts * self.steps, desc=self.name, leave=False, disable=not progress) as bar:
            for r in range(self.restarts):
                state = self.init_state(x0, ref)
                xt = self.start(x0, budget, generator) if (self.random_start or r > 0) else x0.clone()
                xt = self.project(xt, x0, budget, state).detach()
                if best is None and not torch.equal(xt, x0):  # a projection that moves x: score x itself
                    best = start_best(objective, x0, ref, None)
                active = torch.ones(b, dtype=torch.bool, device=x0.device)
                for t in range(self.steps):
                    xt.requires_grad_(True)
                    scores, draws = objective.surrogate(xt, ref)
                    if best is None:  # r = 0, t = 0: xt is x
                        best = start_best(objective, x0, ref, scores.detach())
                    check_finite_scores(scores.detach(), what="attacked score")
                    gain = objective.gain(scores)
                    if objective.deterministic:
                        best.offer(xt, scores, gain)
                    if spread is None and draws is not None and draws.shape[-1] >= 2:
                        spread, draws_n = self._eot_spread(objective, xt, draws), int(draws.shape[-1])
                    (grad,) = torch.autograd.grad(gain.sum(), xt)
                    xt = xt.detach()
                    with torch.no_grad():
                        finite = torch.isfinite(grad)
                        bad = ~finite.reshape(b, -1).all(dim=1)
                        nonfinite += (bad & active).cpu().long()
                        grad = torch.where(finite, grad, torch.zeros_like(grad))
                        flat = grad.reshape(b, -1).abs().amax(dim=1) == 0
                        zero += (flat & active).cpu().long()
                        active &= ~flat
                        if objective.target is Target.TOWARD:
                            active &= (scores.detach() - float(objective.target_score)).abs() > self.tol  # type: ignore[arg-type]
                        if not bool(active.any()):
                            bar.update(self.steps - t)
                            break
                        moved = self.project(self.step(xt, grad, alpha, state), x0, budget, state)
                        xt = torch.where(_bcast(active, xt), moved, xt)
                        iterations += active.cpu().long()
                        k = self.eval_every
                        if not objective.deterministic and k > 0 and (t + 1) % k == 0 and t + 1 < self.steps:
                            s = objective.evaluate(xt, ref)
                            best.offer(xt, s, objective.gain(s))
                            evaluations += 1
                    bar.update(1)
                assert best is not None  # steps >= 1: the first step of the first restart set it
                with torch.no_grad():
                    s = objective.evaluate(xt, ref)
                    best.offer(xt, s, objective.gain(s))
                    evaluations += 1
        assert best is not None
        return build_result(x0, best, iterations, evaluations=evaluations, zero=zero, nonfinite=nonfinite,
                            eot_spread=spread, eot_draws=draws_n)

    @staticmethod
    def _eot_spread(objective: Objective, xt: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """Per-draw gradient spread from two halves of the draws (2 backward passes, graph kept)."""
        half = draws.shape[-1] // 2
        ga, = torch.autograd.grad(objective.gain(draws[:, :half].mean(dim=1)).sum(), xt, retain_graph=True)
        gb, = torch.autograd.grad(objective.gain(draws[:, half:2 * half].mean(dim=1)).sum(), xt,
                                  retain_graph=True)
        return split_half_spread(ga, gb, 2 * half).cpu()
