"""Input-space randomized smoothing of an IQA model, and median smoothing (MS).

Every input-space defense of the suite (MS, DMS, DMS-IQA, RS-Reg, Cert-Reg)
scores the same noisy images and differs only in how it aggregates the n
scores and what it certifies.  The shared part is :class:`InputSmoothedIQA`:

    z_i = clip(x + e_i, 0, 1),  e_i ~ N(0, sigma^2 I),  i = 1..n
    v_i = f(D(z_i), ref)        (D = identity, or a denoiser for DMS/DMS-IQA,
                                 whose output is clipped to [0, 1] as well)

For FR models only the distorted image ``x`` is perturbed; ``ref`` is fixed.
The clipping and the denoiser are part of the base function h = f o clip o D o clip,
and the smoothing certificates hold for any measurable base function, so
they cover the clipped, denoised pipeline exactly as it is evaluated.

The draws are processed in chunks of about ``batch_size`` noisy images per
forward pass (memory does not grow with n) and are generated from the
caller's ``torch.Generator``.

Median smoothing (Chiang et al. 2020, "Detection as Regression: Certified
Object Detection with Median Smoothing", Thm. 1): the defended score is the
median of v; for every ||x' - x||_2 <= eps, the median of h(x' + e) lies
between the Phi(-eps/sigma)- and Phi(eps/sigma)-percentiles of h(x + e),
which are bounded by order statistics of v with joint confidence alpha
(:mod:`robustbench_iqa.certify.bounds`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from robustbench_iqa.certify.bounds import (
    _check_eps,
    median_intervals,
    median_of_sorted,
    order_statistic_indices,
    require_indices,
    sorted_percentile_bounds,
)
from robustbench_iqa.certify.defense import DefenseMixin, Estimate, Statistic, register_defense
from robustbench_iqa.certify.result import AbstainReason, CertifiedScore, Guarantee
from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import IQAModel
from robustbench_iqa.registry import checked_keywords
from robustbench_iqa.validation import check_alpha, check_n, check_pair, check_sigma

MS_STATEMENT = (
    "With probability >= alpha over the n noise draws only, for every x' with ||x'-x||_2 <= eps_x the "
    "population median of h(x'+e), e ~ N(0, sigma^2 I), lies in [lower, upper] "
    "(Chiang et al. 2020, Thm. 1; order-statistic bounds of the Phi(-/+eps/sigma) percentiles). "
    "h = IQA model o clip to [0,1]{denoiser}; no assumption on h. The reported score is the sample median, "
    "an estimate of the population median at x."
)


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


@dataclass(frozen=True)
class RadiusSettings:
    """``certify`` settings of the input-space defenses: the L2 radius ``eps`` (None: sigma / 2)."""

    eps: float | None = None


class InputSmoothedIQA(DefenseMixin, nn.Module):
    """Base of the input-space defenses: noisy scores of ``model`` under N(0, sigma^2 I).

    Args:
        model: the IQA model f (kept frozen; gradients flow to the input only).
        sigma: input-noise standard deviation, in units of the [0, 1] pixel range.
        denoiser: optional module applied to the clipped noisy image (DMS).
        batch_size: noisy images per forward pass (chunking of the n draws).
        clip: clip noisy (and denoised) images to [0, 1] (default; the
            certificates then hold for the clipped pipeline).  ``False`` is
            meant for closed-form tests on models defined on all of R^d.
        name: display name; defaults to ``"<defense>(<model>)"``.
    """

    defense_name = "input-smoothing"
    certify_settings = RadiusSettings
    statistic: Statistic = Statistic.MEDIAN
    eot_aggregate = "soft-median"

    def __init__(
        self,
        model: IQAModel,
        *,
        sigma: float,
        denoiser: nn.Module | None = None,
        batch_size: int = 64,
        clip: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, IQAModel):
            raise InputError(f"model must be an IQAModel, got {type(model).__name__}")
        self.model = model
        self.denoiser = denoiser
        self.sigma = check_sigma(sigma)
        self.batch_size = check_batch_size(batch_size)
        self.clip = bool(clip)
        self.mode = model.mode
        self.lower_better = bool(model.lower_better)
        self.score_range = (float(model.score_range[0]), float(model.score_range[1]))
        self.name = name or f"{self.defense_name}({model.name})"
        self.kind = self.defense_name
        self.eval()

    @property
    def full_reference(self) -> bool:
        return self.model.full_reference

    # ---------------------------------------------------------------- sampling
    def base_scores(self, z: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """h(z) for already-noisy images z (m, 3, H, W): denoise (if any), clip, score."""
        if self.denoiser is not None:
            z = self.denoiser(z)
            if self.clip:
                z = z.clamp(0.0, 1.0)
        return self.model(z, ref)

    def _noise(self, shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        dev = generator.device if generator is not None else like.device
        e = torch.randn(shape, generator=generator, device=dev, dtype=like.dtype)
        return e.to(like.device) * self.sigma

    def noisy_scores(
        self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """v_ij = h(clip(x_i + e_ij)) for j = 1..n, shape (B, n), differentiable in ``x``."""
        x, ref = check_pair(x, ref, full_reference=self.full_reference)
        n = check_n(n)
        bsz, shape = x.shape[0], tuple(x.shape[1:])
        per_chunk = max(1, self.batch_size // bsz)
        out = []
        for start in range(0, n, per_chunk):
            c = min(per_chunk, n - start)
            z = x[:, None] + self._noise((bsz, c, *shape), x, generator)
            if self.clip:
                z = z.clamp(0.0, 1.0)
            r = None if ref is None else ref[:, None].expand(bsz, c, *shape).reshape(bsz * c, *shape)
            out.append(self.base_scores(z.reshape(bsz * c, *shape), r).reshape(bsz, c))
        return torch.cat(out, dim=1)

    # ------------------------------------------------------------- interface
    def aggregate(self, v: torch.Tensor) -> torch.Tensor:
        """The smoothed score from the noisy scores (B, n) -> (B,)."""
        raise NotImplementedError

    @checked_keywords
    @torch.no_grad()
    def predict(
        self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int = 200,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The defended score without certification, shape (B,)."""
        return self.aggregate(self.noisy_scores(x, ref, n=n, generator=generator))

    @checked_keywords
    def certify(
        self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int = 2000, alpha: float = 0.999,
        eps: float | None = None, generator: torch.Generator | None = None,
    ) -> list[CertifiedScore]:
        """Certified bounds on the smoothed score over the L2 ball of radius ``eps`` (default sigma/2)."""
        n, alpha = check_n(n), check_alpha(alpha)
        eps = _check_eps(self.sigma / 2 if eps is None else eps)
        with torch.no_grad():
            v = self.noisy_scores(x, ref, n=n, generator=generator)
        if not bool(torch.isfinite(v).all()):
            raise InputError(f"{self.model.name} produced NaN or Inf scores on noisy inputs")
        return self.certify_scores(v, alpha=alpha, eps=eps)

    def certify_scores(self, v: torch.Tensor, *, alpha: float, eps: float) -> list[CertifiedScore]:
        """The certificate computed from already drawn noisy scores (B, n)."""
        raise NotImplementedError

    def intervals(self, v: torch.Tensor, *, confidence: float) -> list[Estimate]:
        """The defended statistic of each row of ``v`` (B, n) with its ``confidence`` interval."""
        raise NotImplementedError

    def estimate(
        self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int, confidence: float,
        generator: torch.Generator | None = None,
    ) -> list[Estimate]:
        """The defended statistic at ``x`` from ``n`` fresh draws, with its ``confidence`` interval."""
        with torch.no_grad():
            v = self.noisy_scores(x, ref, n=check_n(n), generator=generator).double()
        if not bool(torch.isfinite(v).all()):  # NaN estimates: the gate's finite check fails them
            return [Estimate(math.nan, math.nan, math.nan, n, confidence) for _ in range(v.shape[0])]
        return self.intervals(v, confidence=confidence)

    def _result(
        self, score: float, bounds: tuple[float, float] | None, *, n: int, alpha: float, eps: float,
        guarantee: Guarantee, statement: str, reason: AbstainReason = AbstainReason.NO_ORDER_STATISTIC,
    ) -> CertifiedScore:
        return CertifiedScore(
            score=score,
            lower=None if bounds is None else bounds[0],
            upper=None if bounds is None else bounds[1],
            eps_x=None if bounds is None else eps,
            abstained=bounds is None,
            reason=reason if bounds is None else None,
            n=n, alpha=alpha, sigma=self.sigma, defense=self.defense_name,
            guarantee=guarantee, statement=statement,
        )


class MedianSmoothedIQA(InputSmoothedIQA):
    """MS: median smoothing in input space (Chiang et al. 2020), optionally with a denoiser (DMS).

    ``certify`` abstains (``AbstainReason.NO_ORDER_STATISTIC``) rather than
    raising when n is too small for the requested eps and alpha: unlike FS-IQA,
    the radius is a per-call argument, and a study sweeping eps should get an
    explicit abstention at the radii the sample count cannot support
    (:func:`robustbench_iqa.certify.bounds.min_samples` gives the n needed).
    """

    defense_name = "ms"

    def aggregate(self, v: torch.Tensor) -> torch.Tensor:
        return median_of_sorted(v.sort(dim=1).values)

    def intervals(self, v: torch.Tensor, *, confidence: float) -> list[Estimate]:
        """Sample median and its distribution-free order-statistic interval."""
        med, lo, hi = median_intervals(v, confidence=confidence)
        n = v.shape[1]
        return [Estimate(float(m), float(a), float(b), n, confidence) for m, a, b in zip(med, lo, hi)]

    def certify_scores(self, v: torch.Tensor, *, alpha: float, eps: float) -> list[CertifiedScore]:
        n = v.shape[1]
        srt = v.sort(dim=1).values
        med = median_of_sorted(srt)
        idx = order_statistic_indices(n, sigma=self.sigma, eps=eps, alpha=alpha)
        statement = MS_STATEMENT.format(denoiser="" if self.denoiser is None else " o denoiser o clip")
        if idx is None:
            return [self._result(float(m), None, n=n, alpha=alpha, eps=eps, guarantee=Guarantee.PERCENTILE_BOUNDS,
                                 statement=statement) for m in med]
        lo, hi = sorted_percentile_bounds(srt, idx)
        return [
            self._result(float(med[i]), (float(lo[i]), float(hi[i])), n=n, alpha=alpha, eps=eps,
                         guarantee=Guarantee.PERCENTILE_BOUNDS, statement=statement)
            for i in range(v.shape[0])
        ]


def median_preflight(*, n: int, sigma: float, alpha: float, settings: Mapping[str, Any]) -> None:
    """Refuse ``n`` too small for the percentile bounds at radius ``eps`` (default sigma / 2)."""
    eps = settings.get("eps")
    require_indices(n, sigma=sigma, eps=sigma / 2 if eps is None else float(eps), alpha=alpha)


@register_defense("ms", space="input", statistic="median", preflight=median_preflight,
                  description="MS: median smoothing under input noise (Chiang et al. 2020)")
def create_ms(model: IQAModel, *, sigma: float, batch_size: int = 64, clip: bool = True) -> MedianSmoothedIQA:
    """MS around ``model`` (no training needed)."""
    return MedianSmoothedIQA(model, sigma=sigma, batch_size=batch_size, clip=clip)
