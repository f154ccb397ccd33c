"""The score-based random-search loop, written once, for the black-box attacks.

A query attack needs no gradient: only the recorded score of candidate images,
``objective.evaluate`` (a model's score, or a randomized defense's prediction
with common random numbers, :class:`robustbench_iqa.attacks.eot.DefendedScore`),
so it works on non-differentiable and randomized models.  For Q queries:

    z_1     = init(x, eps) if g(S(init(x, eps))) > g(S(x)) else x      (per image)
    z'_i    = propose(z_{i-1}, i)                                    i = 2..Q
    z_i     = z'_i if g(S(z'_i)) > g(S(z_{i-1})) else z_{i-1}

so the returned z_Q is never worse than the clean image.  The start is kept
only where it beats x: unlike a classifier's margin, a quality score can be
lowered by the start itself (Square attack's stripes are a visible distortion),
and a search trapped below the clean score would return x anyway.  Subclasses supply ``init`` and ``propose`` on
a state dict whose ``"x"`` is the candidate batch and whose other tensors with a
leading batch dimension are accepted or rejected with it; ``adapt`` may update
the state after each decision (step-size rules).

Cost: Q + 1 calls of ``objective.evaluate`` per batch (the clean image and Q
candidates); for a randomized defense each call costs its ``eval_n`` draws.
The acceptance compares values of one deterministic function, so with a
defense's common random numbers it maximizes the prediction under those draws;
re-score the result under other seeds to see how much of the gain carries over.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import torch
from tqdm.auto import tqdm

from robustbench_iqa.attacks.base import Attack, AttackResult, build_result, check_steps, start_best
from robustbench_iqa.attacks.objective import Objective
from robustbench_iqa.attacks.threat import as_threat_model, check_eps, per_image_eps
from robustbench_iqa.errors import InputError
from robustbench_iqa.registry import checked_keywords
from robustbench_iqa.validation import check_finite_scores, check_images

HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
"""Iterations (of 10,000) at which Square attack halves its window fraction p (Andriushchenko et al. 2020)."""


def halving_schedule(p_init: float, i: int, queries: int) -> float:
    """p_init / 2^k, k = how many of :data:`HALVINGS` lie below i rescaled to 10,000 queries."""
    scaled = int(i / max(queries, 1) * 10000)
    return p_init / 2 ** sum(scaled > h for h in HALVINGS)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def rand(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) draws of ``shape`` from ``generator`` (on its device), moved to ``like``'s device."""
    dev = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=dev, dtype=like.dtype).to(like.device)


def randn(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    dev = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=dev, dtype=like.dtype).to(like.device)


def random_signs(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    return torch.where(rand(shape, generator, like) < 0.5, -1.0, 1.0).to(like.dtype)


def randint(high: int, size: int, generator: torch.Generator | None) -> list[int]:
    """``size`` integers in [0, high) from ``generator``, as Python ints."""
    dev = generator.device if generator is not None else torch.device("cpu")
    return [int(v) for v in torch.randint(0, high, (size,), generator=generator, device=dev)]


class QueryAttack(Attack):
    """Base class: the settings every query attack shares plus the loop (see the module doc).

    Args:
        eps: budget in pixel units (``run(eps=...)`` may override it per image).
        norm: threat model (``"linf"`` or ``"l2"``).
        queries: Q, candidate evaluations per image.
    """

    name = "query-attack"

    def __init__(self, *, eps: float, norm: str = "linf", queries: int = 100) -> None:
        self.eps = check_eps(eps)
        self.norm = as_threat_model(norm)
        self.queries = check_steps(queries, what="queries")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(eps={self.eps:g}, norm={self.norm.value!r}, queries={self.queries})"

    @abstractmethod
    def init(self, x0: torch.Tensor, eps: torch.Tensor, generator: torch.Generator | None) -> dict[str, Any]:
        """The first candidate's state (``"x"``: the candidate batch; replaced by x where it is worse)."""

    @abstractmethod
    def propose(self, state: dict[str, Any], x0: torch.Tensor, eps: torch.Tensor, i: int,
                generator: torch.Generator | None) -> dict[str, Any]:
        """A candidate state from the current one at query ``i`` (2..Q)."""

    def adapt(self, state: dict[str, Any], better: torch.Tensor) -> dict[str, Any]:
        """Update the state after a decision (default: nothing)."""
        return state

    @staticmethod
    def accept(state: dict[str, Any], proposal: dict[str, Any], better: torch.Tensor) -> dict[str, Any]:
        """Per image, the proposal's tensors where ``better``, else the current ones."""
        out = dict(state)
        for k, v in proposal.items():
            if isinstance(v, torch.Tensor) and v.dim() >= 1 and v.shape[0] == better.shape[0]:
                out[k] = torch.where(_bcast(better.to(v.device), v), v, state[k])
        return out

    @checked_keywords
    def run(
        self, objective: Objective, x: torch.Tensor, ref: torch.Tensor | None = None, *,
        eps: float | torch.Tensor | None = None, generator: torch.Generator | None = None,
        progress: bool = False, clean: torch.Tensor | None = None,
    ) -> AttackResult:
        """Attack a batch with Q queries per image; returns the best candidate (see the module doc)."""
        x0 = check_images(x).detach()
        if ref is not None:
            ref = check_images(ref, name="ref").detach()
        budget = per_image_eps(self.eps if eps is None else eps, x0)
        best = start_best(objective, x0, ref, clean)
        with torch.no_grad():
            state = self.init(x0, budget, generator)
            s = check_finite_scores(objective.evaluate(state["x"], ref), what="attacked score")
            g = objective.gain(s)
            better = g > best.gain
            state["x"] = torch.where(_bcast(better, x0), state["x"], x0)
            scores, gain = torch.where(better, s, best.scores), torch.where(better, g, best.gain)
            for i in tqdm(range(2, self.queries + 1), desc=self.name, leave=False, disable=not progress):
                prop = self.propose(state, x0, budget, i, generator)
                s = check_finite_scores(objective.evaluate(prop["x"], ref), what="attacked score")
                g = objective.gain(s)
                better = g > gain
                state = self.adapt(self.accept(state, prop, better), better)
                scores, gain = torch.where(better, s, scores), torch.where(better, g, gain)
            best.offer(state["x"], scores, gain)
        iterations = torch.full((x0.shape[0],), self.queries, dtype=torch.long)
        return build_result(x0, best, iterations, evaluations=self.queries + 1)


def window_masks(b: int, h: int, w: int, size: tuple[int, int], generator: torch.Generator | None,
                 like: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """A (B, 1, H, W) boolean mask of one ``size`` window per image at a random position, and the positions."""
    sh, sw = size
    rows, cols = randint(h - sh + 1, b, generator), randint(w - sw + 1, b, generator)
    r = torch.arange(h, device=like.device).reshape(1, 1, h, 1)
    c = torch.arange(w, device=like.device).reshape(1, 1, 1, w)
    r0 = torch.tensor(rows, device=like.device).reshape(b, 1, 1, 1)
    c0 = torch.tensor(cols, device=like.device).reshape(b, 1, 1, 1)
    mask = (r >= r0) & (r < r0 + sh) & (c >= c0) & (c < c0 + sw)
    return mask, list(zip(rows, cols))


def window_side(p: float, h: int, w: int, *, minimum: int = 1) -> int:
    """Side of a square window covering a fraction p of an h x w image, in [minimum, min(h, w)]."""
    if min(h, w) < minimum:
        raise InputError(f"images of {h}x{w} pixels are too small for windows of side {minimum}")
    return int(min(max(round(math.sqrt(p * h * w)), minimum), min(h, w)))
