"""The interface shared by every defense, and their registry.

A defense wraps an IQA model (like ``Smooth`` in Cohen et al.'s reference code):
the constructor takes the modules and ``sigma``; sample counts, confidence and
generators go to each call.  FS-IQA smooths in feature space; MS, DMS, DMS-IQA,
RS-Reg and Cert-Reg smooth in input space.  All return
:class:`~robustbench_iqa.certify.result.CertifiedScore` from ``certify`` so that
every analysis treats them alike.

A defense owns its capabilities, so that no code elsewhere dispatches on its name
or class (STYLE 16):

* ``statistic`` and :meth:`CertifiedDefense.estimate`: the defended statistic at an
  input from fresh draws with a confidence interval of its own kind (order
  statistics for a median, DKW for a trimmed mean, Hoeffding for a bounded mean);
* ``eot_aggregate``: how an adaptive (EOT) attack aggregates the noisy scores to
  attack that statistic: ``"mean"``, ``"soft-median"``, or the defense's own differentiable
  callable ``(B, n) -> (B,)`` (a method) for a statistic of its own;
* ``certify_settings``: the typed, keyword-only settings of its ``certify``
  (FS-IQA: ``tau`` and the spectral method; input-space defenses: the radius
  ``eps``), so a runner or CLI passes exactly the settings the defense takes;
* :meth:`CertifiedDefense.audit_premise`: for a certificate that rests on a premise
  (FS-IQA's first-order Input Variation Estimator), the evidence that the premise
  held at attacked points; ``{}`` per image for defenses without one;
* :meth:`CertifiedDefense.identity`: what identifies it in a run record (name,
  sigma, settings, the SHA-256 of its trained artifact).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import torch

from robustbench_iqa.certify.result import CertifiedScore
from robustbench_iqa.defense_protocol import Defense as Defense
from robustbench_iqa.models.base import IQAModel
from robustbench_iqa.provenance import file_sha256
from robustbench_iqa.registry import Registry


class Statistic(StrEnum):
    """The defended score: which statistic of the noisy scores a suite's defense outputs.

    The built-in names; a defense of another statistic (a quantile, say) declares its own
    name as a string, with its ``estimate`` interval and its ``eot_aggregate``."""

    MEDIAN = "median"
    MEAN = "mean"
    TRIMMED_MEAN = "trimmed-mean"


@dataclass(frozen=True)
class Estimate:
    """The defended statistic at one input, estimated from ``n`` fresh draws.

    ``[low, high]`` covers the population statistic with probability >= ``confidence``
    over the draws (the interval's kind belongs to the defense; see :class:`Statistic`).
    """

    point: float
    low: float
    high: float
    n: int
    confidence: float

    def margin(self, lower: float, upper: float) -> float:
        """How far ``[low, high]`` stays inside ``[lower, upper]`` (negative: it pokes out)."""
        return min(self.low - lower, upper - self.high)

    @property
    def finite(self) -> bool:
        return all(math.isfinite(v) for v in (self.point, self.low, self.high))


@runtime_checkable
class CertifiedDefense(Defense, Protocol):
    """A defense with a certificate; ``certify`` returns one :class:`CertifiedScore` per image."""

    statistic: Statistic | str
    certify_settings: ClassVar[type]

    def certify(
        self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int, alpha: float,
        generator: torch.Generator | None = None,
    ) -> list[CertifiedScore]: ...

    def estimate(
        self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int, confidence: float,
        generator: torch.Generator | None = None,
    ) -> list[Estimate]: ...

    def audit_premise(
        self, x: torch.Tensor, ref: torch.Tensor | None, certificates: list[CertifiedScore], *,
        attacked: torch.Tensor, steps: int, generator: torch.Generator | None = None,
        probe_radii: Mapping[str, Sequence[float | None]] | None = None,
        probe_points: Mapping[str, torch.Tensor] | None = None,
    ) -> list[dict[str, float]]: ...

    def identity(self) -> dict[str, Any]: ...


class DefenseMixin:
    """Defaults shared by the suite's defenses (see the module docstring)."""

    kind: str = ""
    """The registered name (``"fs-iqa"``, ``"ms"``, ...)."""
    artifact: Path | None = None
    """The trained artifact (FS-IQA heads, a denoiser) the defense was built from, if any."""
    certify_settings: ClassVar[type]

    def audit_premise(
        self, x: torch.Tensor, ref: torch.Tensor | None, certificates: list[CertifiedScore], *,
        attacked: torch.Tensor, steps: int, generator: torch.Generator | None = None,
        probe_radii: Mapping[str, Sequence[float | None]] | None = None,
        probe_points: Mapping[str, torch.Tensor] | None = None,
    ) -> list[dict[str, float]]:
        """No premise beyond the smoothing theorem: nothing to audit."""
        return [{} for _ in certificates]

    def sound_radii(self, x: torch.Tensor, ref: torch.Tensor | None = None, *,
                    kinds: Sequence[str] = ()) -> dict[str, list[float | None]]:
        """No radius kinds beyond ``eps_x``: nothing to recompute."""
        return {}

    def identity(self) -> dict[str, Any]:
        art = self.artifact
        return {"defense": self.kind, "sigma": float(getattr(self, "sigma", 0.0)),
                "artifact_sha256": file_sha256(art) if art is not None and Path(art).is_file() else None}


def settings_from(defense: CertifiedDefense, source: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments of ``defense.certify`` found in ``source`` (None values skipped).

    ``source`` is e.g. a verify config or parsed CLI flags: a defense takes only the
    settings its ``certify_settings`` dataclass declares (FS-IQA ``tau``; input-space
    defenses ``eps``), so no caller needs to know which defense takes what.
    """
    names = [f.name for f in dataclasses.fields(defense.certify_settings)]
    return {k: source[k] for k in names if k in source and source[k] is not None}


DEFENSES: Registry[CertifiedDefense] = Registry("defense", package="robustbench_iqa.certify")
"""Every registered defense; factories are ``factory(model, *, sigma, ...) -> CertifiedDefense``."""

F = TypeVar("F", bound=Callable[..., Any])


def register_defense(name: str, *, space: str, statistic: str, trained: bool = False, certified: bool = True,
                     noise: bool = True, randomized: bool = True, artifact: str | None = None,
                     artifact_bare_keys: bool = False, preflight: Callable[..., None] | None = None,
                     description: str = "") -> Callable[[F], F]:
    """Decorator registering a defense factory under ``name``.

    ``space``: where the noise (or the transform) acts (``"feature"`` or ``"input"``);
    ``statistic``: the defended score (``"median"``, ``"mean"``, ``"trimmed-mean"``, or a name of
    the defense's own); ``artifact``: the factory keyword that takes its trained artifact (FS-IQA
    heads: ``"checkpoint"``; a denoiser: ``"denoiser"``), which makes it ``trained``;
    ``artifact_bare_keys``: the verify config's bare ``"model"`` / ``"model@sigma"`` keys of
    ``checkpoints`` name this defense's artifact (one defense at most: FS-IQA);
    ``certified``: whether it has a certificate (empirical defenses predict only);
    ``noise``: whether it draws Gaussian noise of standard deviation ``sigma`` (False: it
    takes only ``sigma=0``); ``randomized``: whether its scores are random at all (False:
    ``noisy_scores`` repeats one deterministic score n times);
    ``preflight``: ``preflight(n=, sigma=, alpha=, settings=)`` raises :class:`InputError` when a
    certification with these settings cannot succeed (too few draws), before any model is built.
    """
    if artifact_bare_keys and any(e.metadata.get("artifact_bare_keys") and n != name
                                  for n, e in DEFENSES._entries.items()):
        raise ValueError(f"defense {name!r}: another defense already owns the bare checkpoint keys")
    return DEFENSES.register(name, description=description, space=space, statistic=statistic,
                             trained=bool(trained or artifact is not None), certified=bool(certified),
                             noise=bool(noise), randomized=bool(randomized), artifact=artifact,
                             artifact_bare_keys=bool(artifact_bare_keys), preflight=preflight)


def list_defenses(**where: Any) -> list[str]:
    """Registered defense names (``where`` filters on metadata, e.g. ``statistic="median"``)."""
    return DEFENSES.names(**where)


def create_defense(name: str, model: IQAModel, *, sigma: float, **options: Any) -> CertifiedDefense:
    """Wrap ``model`` in defense ``name`` (``fs-iqa``, ``ms``, ``dms``, ``dms-iqa``, ``rs-reg``, ``cert-reg``;
    the empirical ``jpeg``, ``bit-depth``, ``median``, ``gaussian-blur``, ``resize``, ``random-resize``,
    ``purifier``, which take ``sigma=0`` and return a :class:`Defense` without ``certify``).

    ``options`` are the defense's own keyword-only settings; one it does not take raises.
    """
    defense = DEFENSES.create(name, model, sigma=sigma, **options)
    if isinstance(defense, DefenseMixin):
        defense.kind = name
    return defense
