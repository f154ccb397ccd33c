"""FS-IQA: certified feature-space median smoothing for IQA models.

Shumitskaya, Vatolin, Antsiferova, "FS-IQA: Certified Feature Smoothing for
Robust Image Quality Assessment", Algorithm 1.  For an image x (and, for FR
models, a fixed reference):

    f_norm = FTN(b(x))                                    (feature preparation)
    v_i    = Scorer(f_norm + e_i),  e_i ~ N(0, sigma_f^2 I), i = 1..N
    S      = median(v_1..v_N)                             (Eq. 1)
    (S^l, S^u) = MS_Cert(v, sigma_f, N, alpha)            (Theorem 2, eps_f = sigma_f)
    eps_x  = sigma_f / ||J_B(x)||_2,  B = FTN o b         (Theorem 1, IVE)
    ABSTAIN if ||J_B(x)||_2 < tau                         (Algorithm 1, line 4)

Statement (as the paper makes it): for every ||dx||_2 <= eps_x, the smoothed
score at x + dx lies in [S^l, S^u] with confidence alpha over the sampling,
*provided* the feature change ||B(x+dx) - B(x)||_2 stays <= sigma_f.  That
premise rests on the first-order approximation of Theorem 1; the suite audits
it with a feature-space attack (``robustbench_iqa.analysis.audit``).  Exactly:
alpha covers the n noise draws only (not the random start of the Lanczos/power
estimate of ||J_B(x)||_2); the bounds concern the population median of the
smoothed score, not the sample median reported as ``score``.

Sound radii (:class:`~robustbench_iqa.certify.result.RadiusKind`).  Beside the
first-order ``eps_x`` (= ``eps_x_first_order``), every certificate carries
``eps_x_lipschitz = sigma_f / L`` when a certified global bound
L >= Lip(FTN o b) is available for the backbone (:meth:`FeatureSmoothedIQA.lipschitz_bound`,
:mod:`robustbench_iqa.lipschitz.composition`; computed once per model, weights and image
size, then cached), and, on request (``local_radius=True``), ``eps_x_local`` from a
certified bound on the Jacobian's variation over the ball
(:mod:`robustbench_iqa.certify.local_lipschitz`).  Inside those two radii the premise
is a theorem, so the statement holds with no approximation.

``tau = 0`` and ||J_B(x)||_2 = 0: the first-order radius sigma_f / 0 is not a
number; FS-IQA abstains (``AbstainReason.ZERO_JACOBIAN``) rather than report an
infinite radius.

The backbone runs once per image; the N draws only pass through the small
scorer, in chunks so memory does not grow with N.

Noise in the scorer's hidden layer (``noise_space="hidden"``, the default).
When the scorer starts with a Linear layer h = W1 f + b1 (W1: h x m, here
128 x 512), the first layer of every draw is

    W1 (f + e) + b1 = (W1 f + b1) + W1 e,   e ~ N(0, sigma_f^2 I_m),

and W1 e ~ N(0, sigma_f^2 W1 W1^T) exactly (a linear map of a Gaussian).  With
L L^T = W1 W1^T (Cholesky, h x h) and z ~ N(0, I_h), sigma_f L z has that same
distribution, so

    v_i = rest(W1 f + b1 + sigma_f L z_i)

has the same joint distribution as Scorer(f + e_i) in Algorithm 1 / Eq. 1:
the draws are i.i.d. with the same law, so the median S, the MS_Cert order
statistics (S^l, S^u) and their confidence alpha (which only need i.i.d.
draws of the smoothed score) are unchanged.  Only the samples differ for a
given seed.  It costs h/m of the plain first-layer work and random numbers (a
quarter at 128/512).  L depends only on the scorer weights; it is computed
once per call in float64 and treated as a constant (no gradient to W1 through
the noise term; gradients w.r.t. f, hence x, are exact).  The plain path
(``noise_space="feature"``) is used when asked for, when the scorer does not
start with ``nn.Linear``, or when W1 W1^T is not (numerically) positive
definite, e.g. h > m or W1 rank-deficient.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from robustbench_iqa.attacks.feature_space import feature_space_attack
from robustbench_iqa.certify.bounds import (
    median_intervals,
    median_of_sorted,
    require_indices,
    sorted_percentile_bounds,
)
from robustbench_iqa.certify.checkpoint_io import read_checkpoint
from robustbench_iqa.certify.defense import DefenseMixin, Estimate, Statistic, register_defense
from robustbench_iqa.certify.heads import FTN, Scorer, split_first_linear
from robustbench_iqa.certify.result import AbstainReason, CertifiedScore, Guarantee, IVEEvidence
from robustbench_iqa.certify.spectral import (
    DEFAULT_BOUND_ITER,
    SpectralMethod,
    SpectralNormEstimate,
    jacobian_spectral_norm,
    top_input_direction,
)
from robustbench_iqa.errors import BoundUnavailableError, InputError
from robustbench_iqa.lipschitz.composition import LipschitzBound, module_lipschitz_bound
from robustbench_iqa.models.base import Backbone, IQAModel, Mode
from robustbench_iqa.registry import checked_keywords
from robustbench_iqa.validation import check_alpha, check_n, check_pair, check_sigma

CHECKPOINT_FORMAT = "robustbench_iqa.fs-iqa/1"

STATEMENT = (
    "With probability >= alpha over the n feature-noise draws only, for every ||dx||_2 <= eps_x the population "
    "median of Scorer(B(x+dx) + e), e ~ N(0, sigma_f^2 I), lies in [lower, upper] (Chiang et al. 2020, Thm. 1 in "
    "feature space with eps_f = sigma_f), provided ||B(x+dx) - B(x)||_2 <= sigma_f, B = FTN o b.  That premise is "
    "a theorem inside eps_x_lipschitz (certified global Lipschitz bound) and eps_x_local (certified local bound) "
    "and only a first-order estimate inside eps_x = eps_x_first_order = sigma_f / ||J_B(x)||_2 (FS-IQA Thm. 1), "
    "whose spectral norm is a Lanczos estimate (a Rayleigh quotient, not a bound: an estimate below the norm "
    "enlarges eps_x; its random start is not covered by alpha).  The reported score is "
    "the sample median, an estimate of the population median at x."
)
STATEMENT_UPPER_BOUND = (
    "For every ||dx||_2 <= eps_x = sigma_f / U, the population median of Scorer(B(x+dx) + e), "
    "e ~ N(0, sigma_f^2 I), lies in [lower, upper] with "
    "confidence alpha - delta = {confidence:g} (union bound: alpha = {alpha:g} over the noise draws, Chiang et "
    "al. 2020, Thm. 1 in feature space with eps_f = sigma_f; delta = {delta:g} over the random start of "
    "Lanczos, whose upper bound U >= ||J_B(x)||_2 fails with probability at most delta, Kuczynski & "
    "Wozniakowski 1992), provided the IVE premise ||B(x+dx)-B(x)||_2 <= sigma_f holds: U makes its first-order "
    "part ||J_B(x) dx||_2 <= sigma_f hold, not the curvature of B (FS-IQA Thm. 1); the premise is a theorem "
    "inside eps_x_lipschitz and eps_x_local.  The reported score is the sample median."
)
POWER_REFUSAL = (
    "FS-IQA does not certify from the power method: its Rayleigh quotient under-estimates ||J_B(x)||_2 (and so "
    "over-states eps_x) by an unknown amount; use method='lanczos' (the first-order estimate), "
    "method='lanczos' with delta (an upper bound failing with probability delta), or method='exact'"
)


def check_delta(delta: float, *, alpha: float) -> float:
    """``delta`` of the norm's upper bound, such that alpha - delta is still a confidence (>= 0.5)."""
    if not (0 < delta and alpha - delta >= 0.5):
        raise InputError(f"delta must lie in (0, alpha - 0.5] = (0, {alpha - 0.5:g}] so that the certificate's "
                         f"confidence alpha - delta stays >= 0.5, got {delta!r}")
    return float(delta)


class NoiseSpace(StrEnum):
    """Where the feature noise e ~ N(0, sigma_f^2 I) is drawn (see the module docstring)."""

    FEATURE = "feature"  # e in the 512-d feature space, as in Algorithm 1
    HIDDEN = "hidden"  # W1 e ~ N(0, sigma_f^2 W1 W1^T) after the scorer's first Linear (same law)


@dataclass(frozen=True)
class FSIQASettings:
    """``certify`` settings of FS-IQA (Algorithm 1's tau and the IVE's spectral-norm method)."""

    tau: float = 1e-3
    method: str = "lanczos"
    rtol: float = 1e-3
    max_iter: int = 100
    lipschitz: bool = True
    local_radius: bool = False
    delta: float | None = None
    bound_iter: int = DEFAULT_BOUND_ITER


class FeatureSmoothedIQA(DefenseMixin, nn.Module):
    """An IQA model defended by feature-space median smoothing (FS-IQA).

    Args:
        backbone: frozen module ``(x, ref=None) -> (B, D)`` (e.g. :class:`Backbone`).
        ftn: :class:`~robustbench_iqa.certify.heads.FTN`, features to [0, 1]^512.
        scorer: :class:`~robustbench_iqa.certify.heads.Scorer`.
        sigma: feature-noise standard deviation sigma_f.
        mode: NR (``x``) or FR (``x, ref``; only ``x`` is perturbed).
        lower_better, score_range: metadata of the defended score (FS-IQA is
            trained on subjective scores, so usually higher-better).
        chunk_size: noise draws scored at once per image.
        noise_space: ``"hidden"`` (default) draws the noise after the scorer's
            first Linear layer as sigma_f L z, L L^T = W1 W1^T -- the same
            distribution of scores at h/m of the cost, falling back to
            ``"feature"`` when that is not possible; ``"feature"`` always draws
            e ~ N(0, sigma_f^2 I_m) as in Algorithm 1.
    """

    def __init__(
        self,
        backbone: nn.Module,
        ftn: nn.Module,
        scorer: nn.Module,
        *,
        sigma: float,
        mode: Mode | str = Mode.NR,
        lower_better: bool = False,
        score_range: tuple[float, float] = (0.0, 1.0),
        name: str = "fs-iqa",
        chunk_size: int = 1000,
        noise_space: NoiseSpace | str = NoiseSpace.HIDDEN,
    ) -> None:
        super().__init__()
        self.kind = "fs-iqa"
        self.backbone, self.ftn, self.scorer = backbone, ftn, scorer
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.sigma = check_sigma(sigma)
        self.mode = Mode(mode)
        self.lower_better = bool(lower_better)
        self.score_range = (float(score_range[0]), float(score_range[1]))
        self.name = name
        self.chunk_size = int(chunk_size)
        self.noise_space = noise_space
        self.eval()

    certify_settings = FSIQASettings
    statistic = Statistic.MEDIAN
    eot_aggregate = "soft-median"

    @property
    def full_reference(self) -> bool:
        return self.mode is Mode.FR

    # ----------------------------------------------------------------- pieces
    def normalized_features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """B(x) = FTN(b(x)) in [0, 1]^512, differentiable in ``x``."""
        return self.ftn(self.backbone(x, ref))

    @property
    def noise_space(self) -> NoiseSpace:
        """The requested noise space (see :attr:`effective_noise_space` for the one used)."""
        return self._noise_space

    @noise_space.setter
    def noise_space(self, value: NoiseSpace | str) -> None:
        try:
            self._noise_space = NoiseSpace(value)
        except ValueError:
            raise InputError(
                f"noise_space must be one of {[s.value for s in NoiseSpace]}, got {value!r}"
            ) from None

    def _noise(self, shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        dev = generator.device if generator is not None else like.device
        e = torch.randn(shape, generator=generator, device=dev, dtype=like.dtype)
        return e.to(like.device) * self.sigma

    def hidden_noise_factor(
        self,
    ) -> tuple[nn.Linear, Callable[[torch.Tensor], torch.Tensor], torch.Tensor] | None:
        """``(W1, rest, L)`` for hidden-layer noise, L L^T = W1 W1^T (float64, CPU), or None (plain path).

        None when ``noise_space="feature"``, when the scorer does not start with
        ``nn.Linear``, or when W1 W1^T is not numerically positive definite
        (more outputs than inputs, a rank-deficient W1, or a pivot below
        h * eps_64 of the largest, i.e. a condition number above 1/(h eps_64)).
        """
        if self.noise_space is NoiseSpace.FEATURE:
            return None
        split = split_first_linear(self.scorer)
        if split is None:
            return None
        first, rest = split
        w = first.weight.detach().to(device="cpu", dtype=torch.float64)
        h, m = w.shape
        if h > m:
            return None
        chol, info = torch.linalg.cholesky_ex(w @ w.T)
        if int(info) != 0 or not bool(torch.isfinite(chol).all()):
            return None
        pivots = chol.diagonal().square()
        if not float(pivots.min()) > h * torch.finfo(torch.float64).eps * float(pivots.max()):
            return None
        return first, rest, chol

    @property
    def effective_noise_space(self) -> NoiseSpace:
        """The noise space :meth:`scores_from_features` uses with the current scorer weights."""
        return NoiseSpace.FEATURE if self.hidden_noise_factor() is None else NoiseSpace.HIDDEN

    def scores_from_features(
        self, f: torch.Tensor, *, n: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """v_ij = Scorer(f_i + e_ij) for n draws per row of ``f`` (B, m) -> (B, n).

        With hidden-layer noise (the default when the scorer allows it) the
        draws are ``rest(W1 f_i + b1 + sigma_f L z_ij)``, z ~ N(0, I_h): the same
        distribution (module docstring), other samples for a given seed.
        Randomness comes only from ``generator``; differentiable in ``f``.
        """
        bsz, m = f.shape
        factor = self.hidden_noise_factor()
        out = []
        if factor is None:
            for start in range(0, n, self.chunk_size):
                c = min(self.chunk_size, n - start)
                noisy = f[:, None, :] + self._noise((bsz, c, m), f, generator)
                out.append(self.scorer(noisy.reshape(bsz * c, m)).reshape(bsz, c))
            return torch.cat(out, dim=1)
        first, rest, chol = factor
        hdim = chol.shape[0]
        chol_t = chol.T.to(device=f.device, dtype=f.dtype)
        hidden = first(f)[:, None, :]  # W1 f + b1, (B, 1, h): once per image, differentiable in f
        for start in range(0, n, self.chunk_size):
            c = min(self.chunk_size, n - start)
            noisy = hidden + self._noise((bsz, c, hdim), f, generator) @ chol_t  # sigma_f L z
            out.append(rest(noisy.reshape(bsz * c, hdim)).reshape(bsz, c))
        return torch.cat(out, dim=1)

    def noisy_scores(
        self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Scores under n feature-noise draws, (B, n), differentiable in ``x`` (for EOT attacks)."""
        x, ref = check_pair(x, ref, full_reference=self.full_reference)
        return self.scores_from_features(self.normalized_features(x, ref), n=check_n(n), generator=generator)

    # ------------------------------------------------------------ the modes
    @checked_keywords
    @torch.no_grad()
    def predict(
        self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int = 2000,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """No-certification mode: S = median of the n noisy scores (Eq. 1), shape (B,).

        One backbone forward per image; the draws only pass through the scorer.
        """
        x, ref = check_pair(x, ref, full_reference=self.full_reference)
        f = self.normalized_features(x, ref)
        v = self.scores_from_features(f, n=check_n(n), generator=generator)
        return median_of_sorted(v.sort(dim=1).values)

    @checked_keywords
    def certify(
        self,
        x: torch.Tensor,
        ref: torch.Tensor | None = None,
        *,
        n: int = 2000,
        alpha: float = 0.999,
        tau: float = 1e-3,
        generator: torch.Generator | None = None,
        method: SpectralMethod | str = SpectralMethod.LANCZOS,
        rtol: float = 1e-3,
        max_iter: int = 100,
        lipschitz: bool = True,
        local_radius: bool = False,
        delta: float | None = None,
        bound_iter: int = DEFAULT_BOUND_ITER,
    ) -> list[CertifiedScore]:
        """Algorithm 1: (S, S^l, S^u, eps_x) per image, or an explicit abstention.

        By default eps_x = sigma_f / ||J_B(x)||_2 with the first-order Lanczos
        *estimate* of the norm (see :mod:`robustbench_iqa.certify.spectral`: a
        Rayleigh quotient, not a bound).  With ``delta`` (Lanczos or exact),
        eps_x = sigma_f / U with U the Kuczynski-Wozniakowski upper bound after
        ``bound_iter`` products, which fails with probability at most ``delta``
        over the random start; the certificate's confidence is then alpha - delta
        (union bound), stated in ``statement``.  The power method is refused
        (:data:`POWER_REFUSAL`).

        Raises :class:`InputError` up front when ``n`` is too small for the
        percentile bounds at confidence ``alpha`` (the radius is eps_f = sigma_f,
        so the indices depend on n and alpha only).

        ``lipschitz``: also report ``eps_x_lipschitz`` when the model has a certified
        Lipschitz bound (cached per model and image size; cheap after the first call).
        ``local_radius``: also compute ``eps_x_local`` (one exact Jacobian per image;
        embedded models and backbones computed by a ``TappedFeatures``, see
        :mod:`robustbench_iqa.certify.local_lipschitz`).
        """
        x, ref = check_pair(x, ref, full_reference=self.full_reference)
        n, alpha = check_n(n), check_alpha(alpha)
        if not (tau >= 0):
            raise InputError(f"tau must be >= 0, got {tau!r}")
        if SpectralMethod(method) is SpectralMethod.POWER:
            raise InputError(POWER_REFUSAL)
        if delta is not None:
            check_delta(delta, alpha=alpha)
        require_indices(n, sigma=self.sigma, eps=self.sigma, alpha=alpha)
        est = self.spectral_estimate(x, ref, method=method, rtol=rtol, max_iter=max_iter, generator=generator,
                                     delta=delta, bound_iter=bound_iter)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        local = self.local_radii(x, ref) if local_radius else None
        return self.certify_from_estimate(est, n=n, alpha=alpha, tau=tau, generator=generator,
                                          input_size=size if lipschitz else None, local_radii=local)

    # --------------------------------------------------------- sound radii
    def lipschitz_bound(self, input_size: tuple[int, int]) -> LipschitzBound | None:
        """A certified L >= Lip(FTN o b) on images of ``input_size``, or None when the backbone
        or FTN has none (:func:`~robustbench_iqa.lipschitz.composition.module_lipschitz_bound`)."""
        try:
            backbone = module_lipschitz_bound(self.backbone, input_size)
            ftn = module_lipschitz_bound(self.ftn, input_size)
        except BoundUnavailableError:
            return None
        return backbone.then(ftn)

    def local_radii(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> list[float | None]:
        """eps_x_local per image (:func:`robustbench_iqa.certify.local_lipschitz.local_radii`)."""
        from robustbench_iqa.certify.local_lipschitz import local_radii

        return local_radii(self, x, ref)

    def spectral_estimate(
        self, x: torch.Tensor, ref: torch.Tensor | None = None, *,
        method: SpectralMethod | str = SpectralMethod.LANCZOS, rtol: float = 1e-3, max_iter: int = 100,
        generator: torch.Generator | None = None, delta: float | None = None, bound_iter: int = DEFAULT_BOUND_ITER,
    ) -> SpectralNormEstimate:
        """The IVE's ||J_B(x)||_2 per image, B = FTN o b (with B(x) and the top singular vector).

        With ``delta``, also its upper bound (:func:`~robustbench_iqa.certify.spectral.jacobian_spectral_norm`).
        """
        x, ref = check_pair(x, ref, full_reference=self.full_reference)

        def feature_map(z: torch.Tensor) -> torch.Tensor:
            return self.normalized_features(z, ref)

        return jacobian_spectral_norm(
            feature_map, x, method=method, rtol=rtol, max_iter=max_iter, generator=generator, delta=delta,
            bound_iter=bound_iter,
        )

    def certify_from_estimate(
        self, est: SpectralNormEstimate, *, n: int = 2000, alpha: float = 0.999, tau: float = 1e-3,
        generator: torch.Generator | None = None, input_size: tuple[int, int] | None = None,
        local_radii: Sequence[float | None] | None = None,
    ) -> list[CertifiedScore]:
        """Algorithm 1 after the IVE: the noisy scores from B(x) = ``est.output``, the bounds and eps_x.

        :meth:`certify` is :meth:`spectral_estimate` followed by this; callers that need the
        estimate too (the audit starts its feature attack along its singular vector) call both.
        ``input_size`` (H, W) of the images: with it, ``eps_x_lipschitz`` is filled in when
        the model has a certified Lipschitz bound; ``local_radii``: precomputed ``eps_x_local``.
        An estimate that carries an upper bound (``est.delta`` set) is certified from the
        bound, at confidence alpha - delta; one from the power method is refused.
        """
        n, alpha = check_n(n), check_alpha(alpha)
        if not (tau >= 0):
            raise InputError(f"tau must be >= 0, got {tau!r}")
        if est.method is SpectralMethod.POWER:
            raise InputError(POWER_REFUSAL)
        norms, statement, confidence = est.value, STATEMENT, alpha
        bounded = est.delta is not None and est.upper_bound is not None
        if est.delta is not None and est.upper_bound is not None:
            check_delta(est.delta, alpha=alpha)
            norms = est.upper_bound
            confidence = alpha - est.delta
            statement = STATEMENT_UPPER_BOUND.format(confidence=confidence, alpha=alpha, delta=est.delta)
        idx = require_indices(n, sigma=self.sigma, eps=self.sigma, alpha=alpha)
        with torch.no_grad():
            # The spectral estimate already ran the forward pass: reuse B(x).
            v = self.scores_from_features(est.output, n=n, generator=generator).sort(dim=1).values
            med = median_of_sorted(v)
            lo, hi = sorted_percentile_bounds(v, idx)
        bsz = est.output.shape[0]
        if local_radii is not None and len(local_radii) != bsz:
            raise InputError(f"local_radii has {len(local_radii)} entries for {bsz} images")
        bound = self.lipschitz_bound(input_size) if input_size is not None else None
        results = []
        for i in range(bsz):
            norm = float(norms[i])
            reason: AbstainReason | None = None
            if norm < tau:
                reason = AbstainReason.JACOBIAN_NORM_BELOW_TAU
            elif norm <= 0.0:
                reason = AbstainReason.ZERO_JACOBIAN
            elif not bounded and not bool(est.converged[i]):  # the upper bound holds converged or not
                reason = AbstainReason.SPECTRAL_NORM_NOT_CONVERGED
            value = float(est.value[i])  # the first-order value, also when eps_x uses the upper bound
            eps_main = None if reason else self.sigma / norm
            eps_first = None if reason or not value > 0.0 else self.sigma / value
            results.append(
                CertifiedScore(
                    score=float(med[i]),
                    lower=None if reason else float(lo[i]),
                    upper=None if reason else float(hi[i]),
                    eps_x=eps_main,
                    eps_x_first_order=eps_first,
                    confidence=confidence,
                    spectral_norm_upper=norm if bounded else None,
                    eps_x_lipschitz=None if reason or bound is None else _radius(self.sigma, bound.value),
                    eps_x_local=None if reason or local_radii is None else local_radii[i],
                    lipschitz_bound=None if bound is None else bound.value,
                    abstained=reason is not None,
                    reason=reason,
                    spectral_norm=value,
                    spectral_iterations=int(est.iterations[i]),
                    spectral_rel_change=float(est.rel_change[i]),
                    n=n,
                    alpha=alpha,
                    sigma=self.sigma,
                    defense="fs-iqa",
                    guarantee=Guarantee.PERCENTILE_BOUNDS,
                    statement=statement,
                    evidence=IVEEvidence(
                        est.output[i].detach(),
                        None if est.output_vector is None else est.output_vector[i].detach(),
                        str(est.method.value),
                        None if est.products is None else int(est.products[i]),
                    ),
                )
            )
        return results

    # ------------------------------------------------------------ the audit
    def estimate(
        self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int, confidence: float,
        generator: torch.Generator | None = None,
    ) -> list[Estimate]:
        """The smoothed median at ``x`` from ``n`` fresh draws, with its distribution-free interval."""
        with torch.no_grad():
            v = self.noisy_scores(x, ref, n=n, generator=generator).double()
        if not bool(torch.isfinite(v).all()):
            return [Estimate(math.nan, math.nan, math.nan, n, confidence) for _ in range(v.shape[0])]
        med, lo, hi = median_intervals(v, confidence=confidence)
        return [Estimate(float(m), float(a), float(b), n, confidence) for m, a, b in zip(med, lo, hi)]

    def bound_levels(self, certificate: CertifiedScore) -> tuple[float, float]:
        """(p_lo, p_hi) = (Phi(-1), Phi(1)): the population quantiles of the noisy scores at x that
        ``lower`` and ``upper`` stand for (Chiang et al. Thm. 1 with eps_f = sigma_f)."""
        from robustbench_iqa.certify.bounds import percentile_levels

        return percentile_levels(sigma=self.sigma, eps=self.sigma)

    def sound_radii(self, x: torch.Tensor, ref: torch.Tensor | None = None, *,
                    kinds: Sequence[str] = ("lipschitz",)) -> dict[str, list[float | None]]:
        """The sound radii recomputed from the model (not from a certificate), per kind and image.

        ``"lipschitz"``: sigma_f / L with L from :meth:`lipschitz_bound` (None when the model has
        none); ``"local"``: :meth:`local_radii`.  The audit compares a certificate's claimed sound
        radius with these: a sound radius is a deterministic theorem, so a claim above them is wrong.
        """
        x, ref = check_pair(x, ref, full_reference=self.full_reference)
        out: dict[str, list[float | None]] = {}
        if "lipschitz" in kinds:
            bound = self.lipschitz_bound((int(x.shape[-2]), int(x.shape[-1])))
            value = None if bound is None else _radius(self.sigma, bound.value)
            out["lipschitz"] = [value] * x.shape[0]
        if "local" in kinds:
            out["local"] = self.local_radii(x, ref)
        return out

    def audit_premise(
        self, x: torch.Tensor, ref: torch.Tensor | None, certificates: list[CertifiedScore], *,
        attacked: torch.Tensor, steps: int, generator: torch.Generator | None = None,
        probe_radii: Mapping[str, Sequence[float | None]] | None = None,
        probe_points: Mapping[str, torch.Tensor] | None = None,
    ) -> list[dict[str, float]]:
        """The IVE premise ``||B(x') - B(x)||_2 <= sigma_f`` inside each certified ball.

        The largest feature change found by :func:`~robustbench_iqa.attacks.feature_space.feature_space_attack`
        within ``eps_x`` (started along +-the top right singular vector of J_B(x), the first-order
        worst case, from the certificate's own IVE evidence, or else from one random direction), and at
        the ``attacked`` points of the score attack; next to the feature radius sigma_f.
        Abstained images get ``{}``.

        ``probe_radii``: other radii to measure the premise at without a new attack (a sound radius,
        an inflated one), per name and certificate: the best feature perturbation u found inside
        eps_x is rescaled to each radius r (x + u r / ||u||, clipped to [0, 1], so inside the
        r-ball), and so are the ``probe_points`` of that name (B, ...) if given; the larger
        change is reported as ``feature_change@<name>``.
        """
        out: list[dict[str, float]] = [{} for _ in certificates]
        idx = [i for i, c in enumerate(certificates) if not c.abstained and c.eps_x is not None]
        if not idx:
            return out
        xs, adv = x[idx], attacked[idx]
        rs = None if ref is None else ref[idx]

        def fmap(z: torch.Tensor) -> torch.Tensor:
            return self.normalized_features(z, rs)

        budget = torch.tensor([float(certificates[i].eps_x) for i in idx], device=x.device,  # type: ignore[arg-type]
                              dtype=x.dtype)
        vectors = [getattr(certificates[i].evidence, "output_vector", None) for i in idx]
        start = None
        if all(v is not None for v in vectors):
            start = top_input_direction(fmap, xs, torch.stack([v for v in vectors if v is not None]).to(x.device))
        # A random start only when there is no first-order direction: on the embedded models the
        # +-top-direction starts always reached the larger change (measured on 16 images).
        fa = feature_space_attack(fmap, xs, budget, steps=steps, restarts=0 if start is not None else 1,
                                  direction=start, generator=generator)
        with torch.no_grad():
            f0 = torch.stack([certificates[i].evidence.features for i in idx]).to(x.device) \
                if all(certificates[i].evidence is not None for i in idx) else fmap(xs)
            at_adv = (fmap(adv) - f0).reshape(len(idx), -1).norm(dim=1)
        for j, i in enumerate(idx):
            out[i] = {"feature_change": max(float(fa.feature_change[j]), float(at_adv[j])),
                      "feature_radius": float(self.sigma)}
        for name, radii in (probe_radii or {}).items():
            r = torch.tensor([math.nan if (v := radii[i]) is None else float(v) for i in idx],
                             device=x.device, dtype=x.dtype)
            known = torch.isfinite(r)
            if not bool(known.any()):
                continue
            r = torch.where(known, r, torch.zeros_like(r))
            candidates = [_rescaled(xs, fa.perturbation, r)]
            if probe_points is not None and name in probe_points:
                candidates.append(_rescaled(xs, probe_points[name][idx].to(x) - xs, r))
            with torch.no_grad():
                change = torch.stack([(fmap(c) - f0).reshape(len(idx), -1).norm(dim=1) for c in candidates]).amax(0)
            for j, i in enumerate(idx):
                if bool(known[j]):
                    out[i][f"feature_change@{name}"] = float(change[j])
        return out


def _rescaled(x: torch.Tensor, u: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """x + u * radius / ||u||_2 per image, clipped to [0, 1] (clipping only moves towards x)."""
    norm = u.reshape(u.shape[0], -1).norm(dim=1).clamp_min(1e-30)
    scale = (radius / norm).reshape(-1, *([1] * (u.dim() - 1)))
    return (x + u * scale).clamp(0.0, 1.0)


def _radius(sigma: float, lipschitz: float) -> float:
    """sigma_f / L, infinite for L = 0 (a constant feature map moves by nothing)."""
    return sigma / lipschitz if lipschitz > 0 else float("inf")


# --------------------------------------------------------------- checkpoints
def save_fs_checkpoint(
    path: str | Path, ftn: FTN, scorer: Scorer, *, sigma: float, model: str,
    higher_better: bool = True, score_range: tuple[float, float] = (0.0, 1.0),
    extra: dict[str, Any] | None = None,
) -> None:
    """Write FTN + scorer and their configuration to a safetensors file."""
    tensors = {f"ftn.{k}": v.detach().cpu().contiguous() for k, v in ftn.state_dict().items()}
    tensors.update({f"scorer.{k}": v.detach().cpu().contiguous() for k, v in scorer.state_dict().items()})
    meta = {
        "format": CHECKPOINT_FORMAT,
        "model": model,
        "sigma": repr(float(sigma)),
        "ftn": json.dumps({"in_dim": ftn.in_dim, "out_dim": ftn.out_dim, "hidden": list(ftn.hidden)}),
        "scorer": json.dumps({"in_dim": scorer.in_dim, "hidden": scorer.hidden_dim}),
        "higher_better": json.dumps(bool(higher_better)),
        "score_range": json.dumps([float(score_range[0]), float(score_range[1])]),
        "extra": json.dumps(extra or {}),
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def load_fs_checkpoint(path: str | Path) -> tuple[FTN, Scorer, dict[str, Any]]:
    """Read a checkpoint written by :func:`save_fs_checkpoint`; clear errors on bad files."""
    p = Path(path)
    tensors, meta = read_checkpoint(p, fmt=CHECKPOINT_FORMAT, what="FS-IQA checkpoint")
    fcfg, scfg = json.loads(meta["ftn"]), json.loads(meta["scorer"])
    ftn = FTN(fcfg["in_dim"], fcfg["out_dim"], fcfg["hidden"])
    scorer = Scorer(scfg["in_dim"], scfg["hidden"])
    try:
        ftn.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ftn.")})
        scorer.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("scorer.")})
    except RuntimeError as exc:
        raise InputError(f"FS-IQA checkpoint {p} does not match its configuration: {exc}") from None
    info = {
        "model": meta.get("model", ""),
        "sigma": float(meta["sigma"]),
        "higher_better": json.loads(meta.get("higher_better", "true")),
        "score_range": tuple(json.loads(meta.get("score_range", "[0, 1]"))),
        "extra": json.loads(meta.get("extra", "{}")),
        "path": str(p),
    }
    return ftn.eval(), scorer.eval(), info


def shipped_checkpoint(model: str, sigma: float) -> Path | None:
    """Path of the FS-IQA heads shipped for ``model`` at ``sigma``, if any."""
    name = f"fs-iqa-{model}-sigma{float(sigma):g}.safetensors"
    ref = resources.files("robustbench_iqa") / "weights" / name
    path = Path(str(ref))
    return path if path.is_file() else None


def fs_iqa_preflight(*, n: int, sigma: float, alpha: float, settings: Mapping[str, Any]) -> None:
    """Refuse ``n`` too small for the percentile bounds at the feature radius eps_f = sigma_f."""
    require_indices(n, sigma=sigma, eps=sigma, alpha=alpha)


@register_defense("fs-iqa", space="feature", statistic="median", artifact="checkpoint", artifact_bare_keys=True,
                  preflight=fs_iqa_preflight,
                  description="FS-IQA: median smoothing in feature space with the IVE radius (Shumitskaya et al.)")
def create_fs_iqa(
    model: IQAModel, *, sigma: float, checkpoint: str | Path | None = None, chunk_size: int = 1000,
    noise_space: NoiseSpace | str = NoiseSpace.HIDDEN,
) -> FeatureSmoothedIQA:
    """FS-IQA around ``model`` with trained heads from ``checkpoint`` (or the shipped ones)."""
    sigma = check_sigma(sigma)
    path = Path(checkpoint) if checkpoint is not None else shipped_checkpoint(model.name, sigma)
    if path is None:
        raise InputError(
            f"no trained FS-IQA heads for model {model.name!r} at sigma={sigma:g}; train them with "
            f"`robustbench-iqa train --model {model.name} --sigma {sigma:g} --out CKPT` and pass --checkpoint CKPT"
        )
    ftn, scorer, info = load_fs_checkpoint(path)
    if info["model"] and info["model"] != model.name:
        raise InputError(
            f"checkpoint {path} holds FS-IQA heads trained on model {info['model']!r}, not on {model.name!r}"
        )
    if abs(info["sigma"] - sigma) > 1e-9:
        raise InputError(
            f"checkpoint {path} was trained at sigma={info['sigma']:g}, not at the requested sigma={sigma:g}"
        )
    dev = model.device
    fs = FeatureSmoothedIQA(
        Backbone(model), ftn.to(dev), scorer.to(dev), sigma=sigma, mode=model.mode,
        lower_better=not info["higher_better"], score_range=info["score_range"],
        name=f"fs-iqa({model.name})", chunk_size=chunk_size, noise_space=noise_space,
    )
    fs.artifact = path
    return fs
