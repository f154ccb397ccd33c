"""What every defense provides to whoever attacks or scores it, certified or not.

A defense wraps an IQA model and draws noise (or another randomized transform) at each
call: ``noisy_scores`` gives the base model's scores under ``n`` draws, differentiable in
the input, and ``predict`` the defended score.  An adaptive attack (expectation over
transformation, :mod:`robustbench_iqa.attacks.eot`) needs nothing more, so this protocol sits
on the ground floor, below the attacks and the defenses alike; the certified defenses extend it
(:class:`robustbench_iqa.certify.defense.CertifiedDefense`) and are registered in
:mod:`robustbench_iqa.certify.defense`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from robustbench_iqa.mode import Mode


@runtime_checkable
class Defense(Protocol):
    """What every defense provides, certified or not.

    ``noisy_scores`` returns the base scores under n noise draws, shape (B, n),
    differentiable with respect to ``x`` (attacks use it for expectation over
    transformation); ``predict`` is the defended score without certification.
    """

    name: str
    sigma: float
    mode: Mode
    lower_better: bool
    score_range: tuple[float, float]

    @property
    def eot_aggregate(self) -> str | Callable[[torch.Tensor], torch.Tensor]:
        """``"mean"``, ``"soft-median"``, or the defense's own differentiable ``(B, n) -> (B,)``."""

    def noisy_scores(
        self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor: ...

    def predict(
        self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor: ...
