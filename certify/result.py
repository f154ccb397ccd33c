"""The typed result that every certified defense returns, one per image.

Abstention is an explicit value (``abstained`` plus a reason), never a magic
number, as in ``Smooth.certify`` of Cohen et al.'s reference implementation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import Enum, StrEnum
from typing import Any


class AbstainReason(StrEnum):
    """Why a defense declined to certify an image."""

    JACOBIAN_NORM_BELOW_TAU = "jacobian_norm_below_tau"
    """FS-IQA, Algorithm 1 line 4: ||J_B(x)||_2 < tau; the linearization is not reliable."""
    SPECTRAL_NORM_NOT_CONVERGED = "spectral_norm_not_converged"
    """The spectral-norm estimate did not reach its relative tolerance; an
    under-converged estimate is too small and would overstate eps_x."""
    NO_ORDER_STATISTIC = "no_order_statistic"
    """n is too small for the percentile bounds at this radius and confidence."""
    BOUND_NOT_INFORMATIVE = "bound_not_informative"
    """The certificate exists but bounds nothing (e.g. a radius of zero)."""


class Guarantee(StrEnum):
    """What kind of statement ``lower``/``upper`` carry."""

    PERCENTILE_BOUNDS = "percentile_bounds"
    """Median smoothing (Chiang et al. 2020, Thm. 1): with probability >= alpha over
    the sampling, the smoothed median at every x' with ||x'-x||_2 <= eps_x lies in
    [lower, upper]."""
    MEAN_BOUNDS = "mean_bounds"
    """Bounded-output mean smoothing: the (trimmed) mean at every x' in the ball
    lies in [lower, upper] with probability >= alpha."""
    PROBABILISTIC = "probabilistic"
    """A probabilistic statement on the base model's output rather than a bound on
    the smoothed output; see ``statement``."""


@dataclass(frozen=True)
class CertifiedScore:
    """Per-image result of ``certify`` (and of ``predict`` with no bounds).

    Attributes:
        score: the defended (smoothed) quality score S.
        lower, upper: the certified bounds S^l <= S(x') <= S^u, or None if abstained.
        eps_x: the certified input-space L2 radius (FS-IQA: sigma_f / ||J_B(x)||_2).
        spectral_norm: ||J_B(x)||_2 (FS-IQA only).
        abstained, reason: explicit abstention.
        n, alpha, sigma: the settings used.
        spectral_iterations, spectral_rel_change: how converged the IVE estimate is.
        guarantee, statement: what the bounds mean, in words.
        evidence: what the defense computed on the way that later steps reuse (FS-IQA:
            :class:`IVEEvidence`); not part of the record (``to_dict`` leaves it out).
    """

    score: float
    lower: float | None
    upper: float | None
    eps_x: float | None
    abstained: bool
    reason: AbstainReason | None = None
    spectral_norm: float | None = None
    spectral_iterations: int | None = None
    spectral_rel_change: float | None = None
    n: int | None = None
    alpha: float | None = None
    sigma: float | None = None
    defense: str = ""
    guarantee: Guarantee = Guarantee.PERCENTILE_BOUNDS
    statement: str = ""
    evidence: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.abstained and self.reason is None:
            raise ValueError("an abstained result needs a reason")
        if not self.abstained and self.lower is not None and self.upper is not None:
            if not (self.lower <= self.upper):
                raise ValueError(f"lower {self.lower} > upper {self.upper}")

    @property
    def width(self) -> float | None:
        if self.lower is None or self.upper is None:
            return None
        return self.upper - self.lower

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (enums as strings, non-finite floats as None)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "evidence"}
        for k, v in list(d.items()):
            if isinstance(v, Enum):
                d[k] = v.value
            elif isinstance(v, float) and not math.isfinite(v):
                d[k] = None
        return d


@dataclass(frozen=True)
class IVEEvidence:
    """FS-IQA's Input Variation Estimator at one image, handed on to later steps.

    ``features`` is B(x) (m,) of the forward pass the estimate used; ``output_vector`` the
    top left singular vector of J_B(x) (m,) from the iterative methods (None for ``exact``),
    from which the first-order worst-case input direction follows with one backward pass.
    """

    features: Any
    output_vector: Any
    method: str
