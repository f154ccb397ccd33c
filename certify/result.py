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
    ZERO_JACOBIAN = "zero_jacobian"
    """FS-IQA with tau = 0 and ||J_B(x)||_2 = 0: the first-order radius sigma_f / 0 is not a
    number; FS-IQA abstains rather than claim an infinite radius."""
    SPECTRAL_NORM_NOT_CONVERGED = "spectral_norm_not_converged"
    """The spectral-norm estimate did not reach its relative tolerance; an
    under-converged estimate is too small and would overstate eps_x."""
    NO_ORDER_STATISTIC = "no_order_statistic"
    """n is too small for the percentile bounds at this radius and confidence."""
    BOUND_NOT_INFORMATIVE = "bound_not_informative"
    """The certificate exists but bounds nothing (e.g. a radius of zero)."""


class Guarantee(StrEnum):
    """What kind of statement ``lower``/``upper`` (and ``eps_x``) carry.

    In every case ``alpha`` is the probability over the defense's *noise draws only*
    (the n Monte-Carlo samples of the certificate).  Nothing else is random in the
    statement; in particular, for FS-IQA the random start of an iterative estimate of
    ||J_B(x)||_2 (Lanczos, power) is *not* covered: that estimate is an estimate
    (see :class:`RadiusKind`).  ``score`` is the sample statistic (median, mean,
    trimmed mean) of the draws, an estimate of the population statistic at x; the
    bounds concern the population statistic, not the reported sample value.
    """

    PERCENTILE_BOUNDS = "percentile_bounds"
    """Median smoothing (Chiang et al. 2020, Thm. 1): with probability >= alpha over the
    n draws, for every x' with ||x'-x||_2 <= eps_x the *population* median of the smoothed
    base output at x' lies in [lower, upper].  MS/DMS/DMS-IQA: no further premise
    (eps_x is the input radius itself).  FS-IQA: eps_f = sigma_f in feature space, so the
    statement holds at x' *provided* ||B(x') - B(x)||_2 <= sigma_f for B = FTN o b; that
    premise is a theorem inside ``eps_x_lipschitz`` (and ``eps_x_local``) and only a
    first-order estimate inside ``eps_x`` = ``eps_x_first_order`` (:class:`RadiusKind`)."""
    MEAN_BOUNDS = "mean_bounds"
    """Bounded-output smoothing (RS-Reg's mean, Cert-Reg's trimmed mean): with probability
    >= alpha over the n draws, the *population* (trimmed) mean E_e h(x'+e) at every x'
    with ||x'-x||_2 <= eps_x lies in [lower, upper]; h = the model with outputs clipped to
    the stated range (which makes the boundedness assumption true)."""
    PROBABILISTIC = "probabilistic"
    """A probabilistic statement on the base model's noisy output rather than a bound on
    the smoothed output: with probability >= alpha over the n draws, for every x' in the
    ball, P_e(h(x'+e) in [lower, upper]) >= the stated probability; see ``statement``."""
    PROBABILISTIC_RADIUS = "probabilistic_radius"
    """The published RS-Reg / Cert-Reg certificate: a *radius* eps_x =
    sigma (Phi^-1(p_lower) - Phi^-1(P_required)) such that, with probability >= alpha over
    the n estimation draws (Clopper-Pearson), for every x' with ||x'-x||_2 <= eps_x the
    output at x' (RS-Reg: h(x'+e), one noisy draw; Cert-Reg: the trimmed mean of n_smooth
    fresh noisy draws) lies in [lower, upper] = h(x) -+ eps_y with probability >= P over
    those draws.  A probability, not a bound: see ``statement``."""

    @property
    def auditable(self) -> bool:
        """Whether the statement bounds the defended statistic itself over the ball, so that an
        attack inside ``eps_x`` and the defense's own ``estimate`` at the attacked point can refute
        it (percentile and mean bounds); a probabilistic statement cannot be refuted that way."""
        return self in (Guarantee.PERCENTILE_BOUNDS, Guarantee.MEAN_BOUNDS)


class RadiusKind(StrEnum):
    """The FS-IQA input radii and exactly what each one proves.

    All three turn the feature radius sigma_f into an input radius; inside the radius
    the IVE premise ||B(x') - B(x)||_2 <= sigma_f is:
    """

    FIRST_ORDER = "first_order"
    """``eps_x_first_order`` = sigma_f / ||J_B(x)||_2 (FS-IQA Thm. 1, the paper's radius and
    ``eps_x``): an *estimate*.  The premise holds only to first order in ||x'-x||
    (curvature can break it inside the ball), and ||J_B(x)||_2 is itself estimated from a
    random start (Lanczos / power approach it from below), which this radius does not
    account for."""
    LIPSCHITZ = "lipschitz"
    """``eps_x_lipschitz`` = sigma_f / L with L a certified global upper bound of Lip(FTN o b)
    (:mod:`robustbench_iqa.lipschitz.composition`): the premise is a theorem (deterministic, no
    randomness) for every x' in the ball."""
    LOCAL = "local"
    """``eps_x_local``: the largest r with sup_{||x'-x|| <= r} ||B(x') - B(x)||_2 <= sigma_f
    proved by the exact Jacobian at x plus a certified bound on its variation over the ball
    (:mod:`robustbench_iqa.certify.local_lipschitz`): a theorem, deterministic."""


@dataclass(frozen=True)
class CertifiedScore:
    """Per-image result of ``certify`` (and of ``predict`` with no bounds).

    Attributes:
        score: the defended (smoothed) quality score S (a sample statistic).
        lower, upper: bounds on the population statistic S(x') for x' in a ball around x,
            holding with probability >= ``confidence`` over the noise draws and only under
            the guarantee's premise (see :class:`Guarantee`); None if abstained.
        eps_x: the input-space L2 radius of the main statement.  For MS/DMS/DMS-IQA it is
            certified; for FS-IQA it is the first-order radius sigma_f / ||J_B(x)||_2 (or
            sigma_f / U with ``delta``), an *estimate* whose premise is not proved
            (:class:`RadiusKind`); FS-IQA's sound radii are ``eps_x_lipschitz`` and ``eps_x_local``.
        spectral_norm: the Lanczos (or exact) value of ||J_B(x)||_2 (FS-IQA only); with
            ``delta`` the upper bound used for ``eps_x`` is ``spectral_norm_upper``.
        confidence: the probability with which the statement holds: ``alpha``, or
            ``alpha - delta`` when ``eps_x`` rests on an upper bound of the norm that fails
            with probability ``delta`` (union bound).
        abstained, reason: explicit abstention.
        n, alpha, sigma: the settings used.
        spectral_iterations, spectral_rel_change: how converged the IVE estimate is.
        guarantee, statement: what the bounds mean, in words.
        evidence: what the defense computed on the way that later steps reuse (FS-IQA:
            :class:`IVEEvidence`); not part of the record (``to_dict`` leaves it out).
        eps_x_first_order, eps_x_lipschitz, eps_x_local: FS-IQA's input radii by kind
            (:class:`RadiusKind`); ``eps_x_first_order`` is sigma_f / ``spectral_norm``, the
            first-order value even when ``eps_x`` uses the upper bound.  None when not
            computed (or not available for the model).
        lipschitz_bound: the certified Lip(FTN o b) behind ``eps_x_lipschitz``.
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
    eps_x_first_order: float | None = None
    eps_x_lipschitz: float | None = None
    eps_x_local: float | None = None
    lipschitz_bound: float | None = None
    confidence: float | None = None
    spectral_norm_upper: float | None = None
    evidence: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.abstained and self.reason is None:
            raise ValueError("an abstained result needs a reason")
        if not self.abstained and self.lower is not None and self.upper is not None:
            if not (self.lower <= self.upper):
                raise ValueError(f"lower {self.lower} > upper {self.upper}")

    @property
    def stated_confidence(self) -> float | None:
        """``confidence`` when set, else ``alpha`` (results built before the field existed)."""
        return self.confidence if self.confidence is not None else self.alpha

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
    from which the first-order worst-case input direction follows with one backward pass;
    ``products`` the Jacobian products the estimate used (None where the method does not count
    them).
    """

    features: Any
    output_vector: Any
    method: str
    products: int | None = None
