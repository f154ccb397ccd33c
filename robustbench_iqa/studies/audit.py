"""The audit study: do certified bounds hold under attack inside the certified radius?

It runs inside the certify study's units (``stage = "certify"``), on each freshly
certified batch, reusing the clean pass and the certificates' evidence.  For every
certified image with (S, S^l, S^u, eps_x):

1. **Score attack inside the ball.**  PGD-L2 with expectation over the defense's
   noise (the defense's own EOT aggregate: a soft median of ``eot`` draws for median
   defenses, their mean for mean defenses; fresh noise per step) within
   ``||x' - x||_2 <= eps_x``, once raising and once lowering the apparent quality.
2. **Estimate at the attacked point.**  The defense's statistic at x' from ``n`` fresh
   draws with the defense's own interval at per-image confidence ``c``
   (:meth:`~robustbench_iqa.certify.defense.CertifiedDefense.estimate`).  Of the two
   attacked points, the one closer to leaving [S^l, S^u] is kept.  An image is a
   **violation** when the whole interval lies outside the bounds, **holds** when it
   lies inside, **inconclusive** otherwise; inconclusive images are estimated again
   with ``resample_n`` draws before they are judged.
3. **Premise.**  For a certificate resting on a premise (FS-IQA: the first-order IVE,
   ``||B(x') - B(x)||_2 <= sigma_f`` inside eps_x), the defense's own
   :meth:`~robustbench_iqa.certify.defense.CertifiedDefense.audit_premise` (a
   feature-space attack started along the top singular direction) records the largest
   feature change found next to the feature radius.

The gate (:meth:`AuditStudy.checks`), per (model, defense, sigma):

* **violations**: under a correct certificate an image is a violation with probability
  at most p0 = (1 - alpha) + 2 (1 - c) (the certificate's error, plus the two-sided miss
  probability of the interval at x'), so the exact one-sided binomial test of
  H0: rate <= p0 is applied to the violation count;
* **premise**: the premise counts as failed on an image when the feature change exceeds
  ``(1 + premise_tolerance) * sigma_f``; H0: rate <= ``max_premise_failure_rate``, same test;
* both families of tests together are corrected for multiplicity across groups with
  Holm's step-down procedure at family-wise level ``1 - level``;
* **inconclusive**: the inconclusive rate after re-sampling is at most ``max_inconclusive_rate``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from robustbench_iqa.certify.result import Guarantee
from robustbench_iqa.errors import InputError
from robustbench_iqa.studies.base import (
    Check,
    Group,
    Record,
    ReportOptions,
    Row,
    RunData,
    Study,
    StudyOutput,
    finite,
    record,
    register_study,
)
from robustbench_iqa.validation import MAX_SAMPLES

if TYPE_CHECKING:
    from robustbench_iqa.runner.config import VerifyConfig
    from robustbench_iqa.runner.workspace import CertifiedBatch, Workspace

AUDITABLE = tuple(g.value for g in Guarantee if g.auditable)
"""Guarantees that bound the smoothed output itself, and so can be audited at attacked points
(each kind says so itself: :attr:`~robustbench_iqa.certify.result.Guarantee.auditable`); how a
defense is audited is its own: its ``estimate``, ``eot_aggregate`` and ``audit_premise``."""


@dataclass(frozen=True)
class AuditRow(Row):
    """The audit of one image's certificate (abstained images carry only the first fields)."""

    table = "audit"
    score: float = math.nan
    lower: float | None = None
    upper: float | None = None
    eps_x: float | None = None
    abstained: bool = False
    guarantee: str = ""
    alpha: float = math.nan
    attacked_median: float = finite(math.nan)
    """The defended statistic at the kept attacked point (a median, mean or trimmed mean)."""
    median_ci_low: float = finite(math.nan)
    median_ci_high: float = finite(math.nan)
    n_audit: int = 0
    confidence: float = math.nan
    attacked_median_increase: float = math.nan
    attacked_median_decrease: float = math.nan
    attack_l2: float = math.nan
    resampled: bool = False
    feature_change: float = math.nan
    feature_radius: float = math.nan
    reason: str | None = None


@dataclass(frozen=True)
class AuditConfig:
    """``[tool.robustbench_iqa.verify.audit]``."""

    n: int = 4000
    """Draws of the defense at each attacked point."""
    steps: int = 10
    """PGD steps of the score attack (and of the premise's feature attack)."""
    eot: int = 8
    """Noise draws per EOT gradient."""
    confidence: float = 0.9999
    """Per-image confidence of the interval of the statistic at an attacked point."""
    resample_n: int = 16000
    """Draws for a second estimate of inconclusive images (0: no second estimate)."""
    level: float = 0.95
    """Family-wise confidence of the gate's binomial tests (Holm across groups)."""
    max_inconclusive_rate: float = 0.25
    premise_tolerance: float = 0.1
    """A premise fails on an image when its feature change exceeds (1 + tolerance) * feature radius."""
    max_premise_failure_rate: float = 0.1

    def validate(self, where: str) -> None:
        for name in ("n", "steps", "eot"):
            if getattr(self, name) < 1:
                raise InputError(f"{where}.{name} must be >= 1, got {getattr(self, name)}")
        if self.resample_n < 0:
            raise InputError(f"{where}.resample_n must be >= 0, got {self.resample_n}")
        for name in ("n", "resample_n"):
            if getattr(self, name) > MAX_SAMPLES:
                raise InputError(f"{where}.{name} must be at most {MAX_SAMPLES:,}, got {getattr(self, name)}")
        for name in ("confidence", "level"):
            if not 0.5 <= getattr(self, name) < 1:
                raise InputError(f"{where}.{name} must lie in [0.5, 1), got {getattr(self, name)}")
        for name in ("max_inconclusive_rate", "max_premise_failure_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise InputError(f"{where}.{name} must lie in [0, 1], got {getattr(self, name)}")
        if not self.premise_tolerance >= 0:
            raise InputError(f"{where}.premise_tolerance must be >= 0, got {self.premise_tolerance}")


@register_study
class AuditStudy(Study):
    name = "audit"
    title = "Certificate audit"
    summary_text = ("Do certified bounds hold at attacked points inside the certified radius? A violation "
                    "counts only when the whole confidence interval of the attacked statistic lies outside "
                    "[lower, upper]; the premise of a first-order radius is attacked in feature space.")
    tables = (AuditRow,)
    Config = AuditConfig
    stage = "certify"

    def on_certified(self, batch: CertifiedBatch, ws: Workspace) -> list[Record]:
        import torch

        from robustbench_iqa.attacks.eot import eot_objective
        from robustbench_iqa.attacks.gradient import PGD
        from robustbench_iqa.attacks.objective import Target

        cfg, sec = ws.cfg, ws.cfg.section(self.name)
        unit, defense, b, certs = batch.unit, batch.defense, batch.batch, batch.certificates
        rows: dict[int, dict[str, Any]] = {}
        todo: list[int] = []
        for i, c in enumerate(certs):
            rows[i] = {"score": c.score, "lower": c.lower, "upper": c.upper, "eps_x": c.eps_x,
                       "abstained": c.abstained, "guarantee": c.guarantee.value, "alpha": cfg.alpha,
                       "reason": c.reason.value if c.reason else None}
            if c.guarantee.value in AUDITABLE and not c.abstained and c.eps_x is not None \
                    and c.lower is not None and c.upper is not None:
                todo.append(i)
        if todo:
            sub = b.subset(todo)
            eps = torch.tensor([max(float(certs[i].eps_x), 1e-12) for i in todo],  # type: ignore[arg-type]
                               device=sub.x.device, dtype=sub.x.dtype)
            attack = PGD(eps=float(eps.max()), steps=sec.steps, norm="l2")
            best: list[tuple[float, Any]] = [(math.inf, None)] * len(todo)
            best_x = sub.x.clone()
            clean = None  # the recorded clean scores (common random numbers): the same for both targets
            for target in (Target.INCREASE, Target.DECREASE):
                gen = ws.generator(unit, "audit-attack", target.value)
                obj = eot_objective(defense, n=sec.eot, aggregate=defense.eot_aggregate, generator=gen,
                                    target=target, eval_n=sec.eot, eval_seed=cfg.seed)
                if clean is None:
                    clean = obj.evaluate(sub.x, sub.ref)
                with ws.timed(f"audit.attack-{target.value}"):
                    adv = attack.run(obj, sub.x, sub.ref, eps=eps, generator=gen, clean=clean).adv
                with ws.timed("audit.estimate"):
                    ests = defense.estimate(adv, sub.ref, n=sec.n, confidence=sec.confidence,
                                            generator=ws.generator(unit, "audit-estimate", target.value))
                for j, (i, est) in enumerate(zip(todo, ests)):
                    rows[i][f"attacked_median_{target.value}"] = est.point
                    m = est.margin(float(certs[i].lower), float(certs[i].upper))  # type: ignore[arg-type]
                    if best[j][1] is None or m < best[j][0]:
                        best[j] = (m, est)
                        best_x[j] = adv[j]
            ws.tick(0.8)
            # Inconclusive images (the interval straddles a bound): a second, larger estimate.
            again = [j for j, (m, est) in enumerate(best) if sec.resample_n > 0 and _straddles(est, certs[todo[j]])]
            if again:
                with ws.timed("audit.resample"):
                    ests = defense.estimate(best_x[again], None if sub.ref is None else sub.ref[again],
                                            n=sec.resample_n, confidence=sec.confidence,
                                            generator=ws.generator(unit, "audit-resample"))
                for j, est in zip(again, ests):
                    best[j] = (best[j][0], est)
                    rows[todo[j]]["resampled"] = True
            with ws.timed("audit.premise"):
                premise = defense.audit_premise(sub.x, sub.ref, [certs[i] for i in todo], attacked=best_x,
                                                steps=sec.steps, generator=ws.generator(unit, "audit-premise"))
            l2 = (best_x - sub.x).reshape(len(todo), -1).norm(dim=1)
            for j, i in enumerate(todo):
                est = best[j][1]
                rows[i].update({"attacked_median": est.point, "median_ci_low": est.low,
                                "median_ci_high": est.high, "n_audit": est.n, "confidence": est.confidence,
                                "attack_l2": float(l2[j]), **premise[j]})
        return [record(AuditRow(**rows[i]), unit, image) for i, image in enumerate(b.ids)]

    # ------------------------------------------------------------ judgement
    def _classified(self, data: RunData) -> list[tuple[Group, Any]]:
        from robustbench_iqa.analysis import audit

        out = []
        for group, g in data.groups(AuditRow):
            kind = g["guarantee"].fillna("").astype(str)
            g = g[kind.isin(AUDITABLE) | (kind == "") | g["abstained"].astype(bool)]
            if g.empty:
                continue
            ok = np.isfinite(g[["median_ci_low", "median_ci_high"]].astype(float).to_numpy()).all(axis=1)
            g = g[ok | g["abstained"].astype(bool).to_numpy()]  # non-finite rows fail the finite check
            if g.empty:
                continue
            if "alpha" in data.config:  # rows written without their alpha: the run's
                g = g.assign(alpha=g["alpha"].astype(float).fillna(float(data.config["alpha"])))
            out.append((group, audit.classify(g)))
        return out

    def checks(self, data: RunData, cfg: VerifyConfig) -> list[Check]:
        from robustbench_iqa.analysis import audit

        sec = cfg.section(self.name)
        tests: list[tuple[str, Group, int, int, float, str]] = []  # (name, group, count, total, p0, what)
        out: list[Check] = []
        for group, c in self._classified(data):
            certified = int((c["status"] != "abstained").sum())
            viol = int((c["status"] == "violation").sum())
            incon = int((c["status"] == "inconclusive").sum())
            alpha = float(c["alpha"].astype(float).dropna().iloc[0]) if c["alpha"].notna().any() else cfg.alpha
            conf = float(c["confidence"].astype(float).dropna().iloc[0]) if c["confidence"].notna().any() \
                else sec.confidence
            p0 = (1.0 - alpha) + 2.0 * (1.0 - conf)
            tests.append(("certificate audit", group, viol, certified, p0, "violations"))
            fc, fr = c["feature_change"].astype(float), c["feature_radius"].astype(float)
            has_premise = bool(np.isfinite(fc).any())
            if has_premise:
                failed = int(((fc > (1.0 + sec.premise_tolerance) * fr) & ~c["abstained"].astype(bool)).sum())
                tests.append(("premise", group, failed, certified, sec.max_premise_failure_rate,
                              f"feature change > {1 + sec.premise_tolerance:g} x radius"))
            rate = incon / certified if certified else 0.0
            out.append(Check("inconclusive", *group, rate <= sec.max_inconclusive_rate,
                             f"{incon}/{certified} = {rate:.1%} inconclusive after re-sampling "
                             f"(max {sec.max_inconclusive_rate:.0%})"))
        pvalues = [audit.binomial_upper_pvalue(k, n, p0) for _, _, k, n, p0, _ in tests]
        rejected = audit.holm(pvalues, level=1.0 - sec.level)
        for (name, group, k, n, p0, what), p, rej in zip(tests, pvalues, rejected):
            rate = k / n if n else math.nan
            verdict = "FAILS" if rej else "holds"
            detail = (f"{verdict}: {k}/{n} {what} (rate {rate:.3g}) vs allowed {p0:.3g}; one-sided binomial "
                      f"p = {p:.3g}, Holm over {len(tests)} tests at {1 - sec.level:g}") if n else \
                "no certified images to audit"
            out.append(Check(name, *group, not rej, detail))
        return out

    def summary(self, data: RunData, cfg: VerifyConfig) -> dict[Group, dict[str, Any]]:
        sec = cfg.section(self.name)
        out: dict[Group, dict[str, Any]] = {}
        for group, c in self._classified(data):
            cert = c[c["status"] != "abstained"]
            row: dict[str, Any] = {
                "violations": f"{int((c['status'] == 'violation').sum())}/{len(cert)}",
                "inconclusive": int((c["status"] == "inconclusive").sum()),
            }
            ratio = cert["feature_change"].astype(float) / cert["feature_radius"].astype(float)
            if np.isfinite(ratio).any():
                row["premise_failed"] = f"{int((ratio > 1 + sec.premise_tolerance).sum())}/{len(cert)}"
                row["max_feature_ratio"] = float(np.nanmax(ratio))
            out[group] = row
        return out

    def report(self, data: RunData, options: ReportOptions) -> StudyOutput | None:
        from robustbench_iqa.analysis import audit, figures

        frames = [c for _, c in self._classified(data)]
        if not frames:
            return None
        import pandas as pd

        rows = pd.concat(frames, ignore_index=True)
        tol = float(data.config.get("sections", {}).get(self.name, {}).get("premise_tolerance", 0.0))
        table = audit.audit_table(rows, confidence=options.confidence, premise_tolerance=tol)
        out = StudyOutput(tables={"rates": table}, details={"images": audit.classify(rows, premise_tolerance=tol)},
                          figures={"audit": figures.audit_figure(table)})
        out.notes.append(f"premise_failed counts feature changes above {1 + tol:g} x sigma_f inside the radius "
                         f"(the gate's rule, premise_tolerance = {tol:g})")
        return out


def _straddles(est: Any, cert: Any) -> bool:
    inside = est.low >= cert.lower and est.high <= cert.upper
    outside = est.high < cert.lower or est.low > cert.upper
    return not inside and not outside
