"""The interface shared by every certified defense, and their registry.

A defense wraps an IQA model (like ``Smooth`` in Cohen et al.'s reference code):
the constructor takes the modules and ``sigma``; sample counts, confidence and
generators go to each call.  FS-IQA smooths in feature space; MS, DMS, DMS-IQA,
RS-Reg and Cert-Reg smooth in input space.  All return
:class:`~robustbench_iqa.certify.result.CertifiedScore` from ``certify`` so that every analysis
treats them alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch

from robustbench_iqa.certify.result import CertifiedScore
from robustbench_iqa.models.base import IQAModel, Mode
from robustbench_iqa.registry import Registry


@runtime_checkable
class CertifiedDefense(Protocol):
    """What every defense provides.

    ``noisy_scores`` returns the base scores under n noise draws, shape (B, n),
    differentiable with respect to ``x`` (attacks use it for expectation over
    transformation).  ``predict`` is the defended score without certification;
    ``certify`` returns one :class:`CertifiedScore` per image.
    """

    name: str
    sigma: float
    mode: Mode
    lower_better: bool
    score_range: tuple[float, float]

    def noisy_scores(
        self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor: ...

    def predict(
        self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor: ...

    def certify(
        self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int, alpha: float,
        generator: torch.Generator | None = None, **kwargs: Any,
    ) -> list[CertifiedScore]: ...


DEFENSES: Registry[CertifiedDefense] = Registry("defense", package="robustbench_iqa.certify")
"""Every registered defense; factories are ``factory(model, *, sigma, ...) -> CertifiedDefense``."""

F = TypeVar("F", bound=Callable[..., Any])


def register_defense(name: str, *, space: str, statistic: str, trained: bool = False,
                     description: str = "") -> Callable[[F], F]:
    """Decorator registering a defense factory under ``name``.

    ``space``: where the noise is drawn (``"feature"`` or ``"input"``); ``statistic``: the
    defended score (``"median"``, ``"mean"``, ``"trimmed-mean"``); ``trained``: whether it
    needs a trained artifact (FS-IQA heads, a denoiser).
    """
    return DEFENSES.register(name, description=description, space=space, statistic=statistic,
                             trained=bool(trained))


def list_defenses(**where: Any) -> list[str]:
    """Registered defense names (``where`` filters on metadata, e.g. ``statistic="median"``)."""
    return DEFENSES.names(**where)


def create_defense(name: str, model: IQAModel, *, sigma: float, **options: Any) -> CertifiedDefense:
    """Wrap ``model`` in defense ``name`` (``fs-iqa``, ``ms``, ``dms``, ``dms-iqa``, ``rs-reg``, ``cert-reg``).

    ``options`` are the defense's own keyword-only settings; one it does not take raises.
    """
    return DEFENSES.create(name, model, sigma=sigma, **options)
