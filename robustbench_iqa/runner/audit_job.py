"""Certify one image and audit its certificate under attack (FS-IQA, "Certified Guarantees").

For an image x with a certificate (S, S^l, S^u, eps_x):

1. **Score attack inside the ball.**  PGD-L2 with expectation over the
   defense's noise (:mod:`robustbench_iqa.attacks.eot`, soft median of ``eot`` draws for median
   defenses, their mean for mean defenses, fresh noise per step) within ``||x' - x||_2 <= eps_x``, once raising and once lowering
   the apparent quality.  Of the two attacked points, the one whose estimate
   comes closest to leaving ``[S^l, S^u]`` is kept.
2. **Feature attack (FS-IQA only).**  The premise of the Input Variation
   Estimator is ``||B(x') - B(x)||_2 <= sigma_f`` inside the ball; the largest
   feature change found by :func:`robustbench_iqa.attacks.feature_space.feature_space_attack`
   (started along +-the top right singular vector of J_B(x), the first-order
   worst case, and from a random direction) and at the attacked points above is
   recorded next to ``sigma_f``.
3. **Estimate at the attacked point.**  ``audit_n`` fresh draws of the defense
   at x'.  For median defenses: the median and its distribution-free
   order-statistic confidence interval (:func:`robustbench_iqa.analysis.audit.attacked_point_summary`);
   for Cert-Reg the trimmed mean with its DKW interval; for RS-Reg (bounded
   outputs) the mean with a Hoeffding interval on the output range.  A violation is counted only when that whole interval lies
   outside the bounds, so sampling error at x' is not mistaken for a violation.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from robustbench_iqa.analysis.audit import DEFAULT_MEDIAN_CONFIDENCE, attacked_point_summary
from robustbench_iqa.attacks.eot import Aggregate, NoiseMode, eot_objective
from robustbench_iqa.attacks.feature_space import feature_space_attack
from robustbench_iqa.attacks.gradient import PGD
from robustbench_iqa.attacks.objective import Target
from robustbench_iqa.certify.cert_reg import (
    TrimmedMeanSmoothedIQA,
    trimmed_mean,
    trimmed_mean_bounds,
)
from robustbench_iqa.certify.defense import CertifiedDefense
from robustbench_iqa.certify.fs_iqa import FeatureSmoothedIQA
from robustbench_iqa.certify.result import CertifiedScore, Guarantee
from robustbench_iqa.certify.spectral import SpectralNormEstimate, top_input_direction
from robustbench_iqa.runner.config import VerifyConfig
from robustbench_iqa.runner.context import Image, certify_options, generator


def estimate_at(
    defense: CertifiedDefense, x: torch.Tensor, ref: torch.Tensor | None, *, n: int,
    guarantee: Guarantee, gen: torch.Generator, confidence: float = DEFAULT_MEDIAN_CONFIDENCE,
) -> dict[str, float]:
    """The defended statistic at ``x`` from ``n`` fresh draws, with a ``confidence`` interval.

    Median defenses: sample median, distribution-free order-statistic interval.
    Cert-Reg (trimmed mean): the trimmed mean, DKW interval (its own bound at radius 0).
    RS-Reg (mean of outputs clipped to [a, b]): the mean, Hoeffding interval.
    """
    with torch.no_grad():
        v = defense.noisy_scores(x, ref, n=n, generator=gen).reshape(1, -1).double().cpu()
    if not bool(torch.isfinite(v).all()):  # recorded as NaN: the gate's finite check fails it
        nan = float("nan")
        return {"attacked_median": nan, "median_ci_low": nan, "median_ci_high": nan, "n_audit": n}
    if isinstance(defense, TrimmedMeanSmoothedIQA):
        lo, hi = trimmed_mean_bounds(v.sort(dim=1).values, trim=defense.trim, eps=0.0, sigma=defense.sigma,
                                     alpha=confidence, output_range=defense.output_range)
        point = float(trimmed_mean(v, defense.trim)[0])
        return {"attacked_median": point, "median_ci_low": float(lo[0]), "median_ci_high": float(hi[0]),
                "n_audit": n}
    if guarantee is Guarantee.MEAN_BOUNDS:
        a, b = getattr(defense, "output_range", defense.score_range)
        half = (b - a) * math.sqrt(math.log(2.0 / (1.0 - confidence)) / (2.0 * n))  # Hoeffding
        m = float(v.clamp(a, b).mean())
        return {"attacked_median": m, "median_ci_low": m - half, "median_ci_high": m + half, "n_audit": n}
    row = attacked_point_summary(v.numpy(), confidence).iloc[0]
    return {k: float(row[k]) for k in ("attacked_median", "median_ci_low", "median_ci_high", "n_audit")}


def _margin(est: dict[str, float], lower: float, upper: float) -> float:
    """How far the estimate's interval stays inside [lower, upper] (negative: outside)."""
    return min(est["median_ci_low"] - lower, upper - est["median_ci_high"])


def certify_image(
    cfg: VerifyConfig, defense_name: str, defense: CertifiedDefense, img: Image, model_name: str,
) -> tuple[CertifiedScore, float, SpectralNormEstimate | None]:
    """The certificate of one image, the seconds it took and, for FS-IQA, its IVE estimate
    (kept for the feature audit, so the Jacobian's spectral norm is computed once)."""
    gen = generator(cfg, "certify", model_name, defense_name, img.name)
    t0 = time.perf_counter()
    if isinstance(defense, FeatureSmoothedIQA):
        est = defense.spectral_estimate(img.x, img.ref, generator=gen)
        res = defense.certify_from_estimate(est, n=cfg.n, alpha=cfg.alpha, tau=cfg.tau, generator=gen)[0]
        return res, time.perf_counter() - t0, est
    res = defense.certify(img.x, img.ref, n=cfg.n, alpha=cfg.alpha, generator=gen,
                          **certify_options(cfg, defense_name))[0]
    return res, time.perf_counter() - t0, None


def audit_image(
    cfg: VerifyConfig, defense_name: str, defense: CertifiedDefense, img: Image, model_name: str,
    cert: CertifiedScore, ive: SpectralNormEstimate | None = None,
) -> dict[str, Any]:
    """The audit row of one image (see the module docstring); ``ive``: the certificate's
    spectral estimate (FS-IQA), reused by the feature audit."""
    row: dict[str, Any] = {
        "lower": cert.lower, "upper": cert.upper, "abstained": cert.abstained, "eps_x": cert.eps_x,
        "alpha": cfg.alpha, "guarantee": str(cert.guarantee.value), "score": cert.score,
    }
    if cert.abstained or cert.lower is None or cert.upper is None or cert.eps_x is None:
        return {**row, "reason": cert.reason.value if cert.reason else None}
    lower, upper, eps = float(cert.lower), float(cert.upper), float(cert.eps_x)
    budget = torch.tensor([eps], device=img.x.device, dtype=img.x.dtype)
    attack = PGD(eps=max(eps, 1e-12), steps=cfg.attack_steps, norm="l2")
    # Attack the statistic the certificate bounds: a (soft) median, or a mean for mean bounds.
    aggregate = Aggregate.MEAN if cert.guarantee is Guarantee.MEAN_BOUNDS else Aggregate.SOFT_MEDIAN
    best: dict[str, float] | None = None
    best_x = img.x
    for target in (Target.INCREASE, Target.DECREASE):
        gen = generator(cfg, "audit-attack", model_name, defense_name, img.name, target.value)
        obj = eot_objective(defense, n=cfg.eot, aggregate=aggregate, noise=NoiseMode.FRESH,
                            generator=gen, target=target, eval_n=cfg.eot, eval_seed=cfg.seed)
        adv = attack.run(obj, img.x, img.ref, eps=budget, generator=gen).adv
        est_gen = generator(cfg, "audit-estimate", model_name, defense_name, img.name, target.value)
        point = estimate_at(defense, adv, img.ref, n=cfg.audit_n, guarantee=cert.guarantee, gen=est_gen)
        row[f"attacked_median_{target.value}"] = point["attacked_median"]
        if best is None or _margin(point, lower, upper) < _margin(best, lower, upper):
            best, best_x = point, adv
    assert best is not None
    row.update(best)
    row["attack_l2"] = float((best_x - img.x).flatten().norm())
    if isinstance(defense, FeatureSmoothedIQA):
        row.update(_feature_audit(cfg, defense, img, model_name, defense_name, budget, best_x, ive))
    return row


def _feature_audit(
    cfg: VerifyConfig, defense: FeatureSmoothedIQA, img: Image, model_name: str, defense_name: str,
    budget: torch.Tensor, attacked: torch.Tensor, est: SpectralNormEstimate | None,
) -> dict[str, float]:
    """Largest ||B(x') - B(x)||_2 found in the ball, next to the feature radius sigma_f."""
    ref = img.ref

    def fmap(z: torch.Tensor) -> torch.Tensor:
        return defense.normalized_features(z, ref)

    gen = generator(cfg, "audit-feature", model_name, defense_name, img.name)
    # Start along +-v, the top right singular vector of J_B(x) from the certificate's IVE
    # estimate (the first-order worst case), and from one random direction.
    if est is None:
        est = defense.spectral_estimate(img.x, ref, generator=gen)
    start = top_input_direction(fmap, img.x, est.output_vector) if est.output_vector is not None else None
    fa = feature_space_attack(fmap, img.x, budget, steps=cfg.attack_steps, restarts=1, direction=start,
                              generator=gen)
    with torch.no_grad():
        at_adv = float((fmap(attacked) - fmap(img.x)).flatten().norm())
    return {"feature_change": max(float(fa.feature_change[0]), at_adv), "feature_radius": float(defense.sigma)}

