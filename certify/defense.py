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
from typing import Any, Protocol, runtime_checkable

import torch
from robustbench_iqa.certify.result import CertifiedScore

from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import IQAModel, Mode


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


DefenseFactory = Callable[..., CertifiedDefense]
"""``factory(model: IQAModel, *, sigma: float, **options) -> CertifiedDefense``."""

_DEFENSES: dict[str, DefenseFactory] = {}


def register_defense(name: str) -> Callable[[DefenseFactory], DefenseFactory]:
    def deco(factory: DefenseFactory) -> DefenseFactory:
        if name in _DEFENSES:
            raise ValueError(f"defense {name!r} is registered twice")
        _DEFENSES[name] = factory
        return factory

    return deco


def _load_builtin() -> None:
    import importlib

    for mod in ("fs_iqa", "input_smoothing", "denoised", "rs_reg", "cert_reg"):
        try:
            importlib.import_module(f"robustbench_iqa.certify.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"robustbench_iqa.certify.{mod}":
                raise


def list_defenses() -> list[str]:
    _load_builtin()
    return sorted(_DEFENSES)


def create_defense(name: str, model: IQAModel, *, sigma: float, **options: Any) -> CertifiedDefense:
    """Wrap ``model`` in defense ``name`` (``fs-iqa``, ``ms``, ``dms``, ``dms-iqa``, ``rs-reg``, ``cert-reg``)."""
    _load_builtin()
    if name not in _DEFENSES:
        raise InputError(f"unknown defense {name!r}; known defenses: {', '.join(list_defenses())}")
    return _DEFENSES[name](model, sigma=sigma, **options)
