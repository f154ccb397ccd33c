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
4. **The bounds themselves.**  ``lower``/``upper`` of a percentile certificate stand for
   population quantiles of the noisy scores at x (FS-IQA: Phi(-1), Phi(1); the defense's
   ``bound_levels``).  ``bounds_n`` fresh draws at x give inner confidence bounds of those
   quantiles (:func:`~robustbench_iqa.certify.bounds.quantile_check_indices`); an interval
   narrower than them is narrower than the theorem gives, whatever an attack can reach.
5. **Every other radius.**  Each sound radius the certificate claims (``eps_x_lipschitz``,
   ``eps_x_local``) and planted inflated radii are probed with the attacks' results
   rescaled, and sound radii are recomputed from the model
   (:mod:`~robustbench_iqa.studies.audit_probes`).

The gate (:meth:`AuditStudy.checks`), per (model, defense, sigma):

* **violations**: under a correct certificate an image is a violation with probability
  at most p0 = (1 - alpha) + 2 (1 - c) (the certificate's error, plus the two-sided miss
  probability of the interval at x'), so the exact one-sided binomial test of
  H0: rate <= p0 is applied to the violation count;
* **premise**: the premise counts as failed on an image when the feature change exceeds
  ``(1 + premise_tolerance) * sigma_f``; H0: rate <= ``max_premise_failure_rate``, same test;
* **bounds recomputed**: an image counts when ``lower`` lies above the upper confidence
  bound of its quantile or ``upper`` below the lower one; an honest certificate does so with
  probability at most p0 as above (its error per side (1 - alpha) / 2 and the fresh bound's
  1 - c per side), same test;
* these three families together are corrected for multiplicity across groups with
  Holm's step-down procedure at family-wise level ``1 - level``; the wording says "holds"
  only when the observed rate is at or below the allowed one, "above allowed, not
  significant" otherwise (the test says no more);
* **inconclusive**: the inconclusive rate after re-sampling is at most ``max_inconclusive_rate``;
* **sound radius (kind)**: no tolerance (:mod:`~robustbench_iqa.studies.audit_probes`);
* **certified radius**: the radius the run certifies (``radius``) is claimed by the certificates;
* **detection power**: which planted wrong certificates (radius x ``plant_radius``, interval
  shrunk by ``plant_shrink``, sound radius x ``plant_sound``) the same evidence shows to be
  wrong, at Holm's smallest threshold (level / number of tests) for the statistical families
  and with no tolerance for sound radii; it fails only for names in ``require_detection``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from robustbench_iqa.certify.result import Guarantee
from robustbench_iqa.errors import InputError
from robustbench_iqa.studies import audit_judgement as judgement
from robustbench_iqa.studies import audit_probes
from robustbench_iqa.studies.audit_probes import SOUND_KINDS, AuditProbeRow
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
    from robustbench_iqa.studies.context import CertifiedBatch, RunConfig, StudyWorkspace

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
    quantile_lo_ucb: float = math.nan
    """Upper confidence bound (at ``confidence``) of the population quantile that ``lower`` stands for,
    from ``bounds_n`` fresh draws at x (:func:`~robustbench_iqa.certify.bounds.quantile_check_indices`)."""
    quantile_hi_lcb: float = math.nan
    """Lower confidence bound of the population quantile that ``upper`` stands for."""


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
    premise_steps: int | None = None
    """Steps of the premise's feature attack (default: ``steps``)."""
    bounds_n: int = 16000
    """Fresh draws at each clean image to test that [lower, upper] is not narrower than the
    population quantiles the theorem names (0: no such test)."""
    radius: str = "auto"
    """The radius the run certifies (its headline): ``first_order`` (an estimate), ``lipschitz``
    or ``local`` (sound), or ``auto``: the largest sound radius every certificate carries, else
    first-order.  Every radius a certificate claims is audited whatever this says."""
    plant_radius: tuple[float, ...] = (1.5, 2.0)
    """Planted certificates: eps_x inflated by these factors (detection power of the run)."""
    plant_shrink: tuple[float, ...] = (0.3, 0.5)
    """Planted certificates: [lower, upper] shrunk around the score by these fractions."""
    plant_sound: float = 2.0
    """Planted certificates: each claimed sound radius inflated by this factor."""
    require_detection: tuple[str, ...] = ()
    """Planted certificates the run must detect, or the gate fails (e.g. ``["interval -30%"]``)."""

    def validate(self, where: str) -> None:
        if self.radius not in RADIUS_CHOICES:
            raise InputError(f"{where}.radius must be one of {list(RADIUS_CHOICES)}, got {self.radius!r}")
        if any(not (f > 1.0 and math.isfinite(f)) for f in (*self.plant_radius, self.plant_sound)):
            raise InputError(f"{where}.plant_radius and plant_sound must be finite factors > 1")
        if any(not 0.0 < f < 1.0 for f in self.plant_shrink):
            raise InputError(f"{where}.plant_shrink must be fractions in (0, 1), got {list(self.plant_shrink)}")
        names = planted_names(self)
        for name in self.require_detection:
            if name not in names:
                raise InputError(f"{where}.require_detection: {name!r} is not a planted certificate of this "
                                 f"configuration; one of {names}")
        for name in ("n", "steps", "eot"):
            if getattr(self, name) < 1:
                raise InputError(f"{where}.{name} must be >= 1, got {getattr(self, name)}")
        if self.premise_steps is not None and self.premise_steps < 1:
            raise InputError(f"{where}.premise_steps must be >= 1, got {self.premise_steps}")
        if self.bounds_n < 0 or self.bounds_n > MAX_SAMPLES:
            raise InputError(f"{where}.bounds_n must lie in [0, {MAX_SAMPLES:,}], got {self.bounds_n}")
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


RADIUS_CHOICES = ("auto", "first_order", "lipschitz", "local")
RADIUS_WORDS = {"first_order": "first-order radius (an estimate)", "lipschitz": "Lipschitz radius (sound)",
                "local": "local radius (sound)"}


def planted_names(sec: AuditConfig) -> list[str]:
    """The names of the planted certificates a run with ``sec`` reports (sound ones when claimed)."""
    return ([f"first_order x{f:g}" for f in sec.plant_radius] + [f"interval -{f:.0%}" for f in sec.plant_shrink]
            + [f"{k} x{sec.plant_sound:g}" for k in SOUND_KINDS])


@register_study
class AuditStudy(Study):
    name = "audit"
    title = "Certificate audit"
    summary_text = ("Do certified bounds hold at attacked points inside the certified radius? A violation "
                    "counts only when the whole confidence interval of the attacked statistic lies outside "
                    "[lower, upper]; the premise of a first-order radius is attacked in feature space.")
    tables = (AuditRow, AuditProbeRow)
    Config = AuditConfig
    stage = "certify"

    def on_certified(self, batch: CertifiedBatch, ws: StudyWorkspace) -> list[Record]:
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
            mine = [certs[i] for i in todo]
            if sec.bounds_n > 0 and hasattr(defense, "bound_levels"):
                with ws.timed("audit.bounds"):
                    for j, q in enumerate(self._quantile_checks(defense, sub, mine, sec, ws, unit)):
                        rows[todo[j]].update(q)
            plan = audit_probes.probes(mine, inflate=sec.plant_radius, inflate_sound=sec.plant_sound)
            points = {p.name: audit_probes.rescaled_points(sub.x, best_x, p.radii) for p in plan}
            with ws.timed("audit.premise"):
                more = ({"probe_radii": {p.name: p.radii for p in plan}, "probe_points": points}
                        if plan and _accepts(defense.audit_premise, "probe_radii") else {})
                premise = defense.audit_premise(sub.x, sub.ref, mine, attacked=best_x,
                                                steps=sec.premise_steps or sec.steps,
                                                generator=ws.generator(unit, "audit-premise"), **more)
            l2 = (best_x - sub.x).reshape(len(todo), -1).norm(dim=1)
            for j, i in enumerate(todo):
                est = best[j][1]
                rows[i].update({"attacked_median": est.point, "median_ci_low": est.low,
                                "median_ci_high": est.high, "n_audit": est.n, "confidence": est.confidence,
                                "attack_l2": float(l2[j]),
                                **{k: v for k, v in premise[j].items() if "@" not in k}})
            with ws.timed("audit.probes"):
                probe_records = self._probe_records(unit, sub, mine, plan, points, premise, ws, todo, b.ids)
            return [record(AuditRow(**rows[i]), unit, image) for i, image in enumerate(b.ids)] + probe_records
        return [record(AuditRow(**rows[i]), unit, image) for i, image in enumerate(b.ids)]

    @staticmethod
    def _quantile_checks(defense: Any, sub: Any, certs: list[Any], sec: AuditConfig, ws: StudyWorkspace,
                         unit: Any) -> list[dict[str, float]]:
        """Per image, the inner confidence bounds of the quantiles ``lower``/``upper`` stand for."""
        import torch

        from robustbench_iqa.certify.bounds import quantile_check_indices

        with torch.no_grad():
            v = defense.noisy_scores(sub.x, sub.ref, n=sec.bounds_n,
                                     generator=ws.generator(unit, "audit-bounds")).double().sort(dim=1).values
        out: list[dict[str, float]] = []
        for j, c in enumerate(certs):
            p_lo, p_hi = defense.bound_levels(c)
            idx = quantile_check_indices(sec.bounds_n, p_lo=p_lo, p_hi=p_hi, confidence=sec.confidence)
            if idx is None or not bool(torch.isfinite(v[j]).all()):
                out.append({})
                continue
            out.append({"quantile_lo_ucb": float(v[j, idx[0] - 1]), "quantile_hi_lcb": float(v[j, idx[1] - 1])})
        return out

    def _probe_records(self, unit: Any, sub: Any, certs: list[Any], plan: list[audit_probes.Probe],
                       points: dict[str, Any], premise: list[dict[str, float]], ws: StudyWorkspace,
                       todo: list[int], ids: Sequence[str]) -> list[Record]:
        """The evidence at every probe radius (see :mod:`~robustbench_iqa.studies.audit_probes`)."""
        cfg, sec = ws.cfg, ws.cfg.section(self.name)
        defense = ws.defense(unit.model, unit.defense, unit.sigma)
        kinds = sorted({p.kind for p in plan if p.kind in SOUND_KINDS})
        recomputed = defense.sound_radii(sub.x, sub.ref, kinds=kinds) if kinds and hasattr(defense, "sound_radii") \
            else {}
        out: list[Record] = []
        for p in plan:
            have = [j for j, r in enumerate(p.radii) if r is not None]
            if not have:
                continue
            ests = defense.estimate(points[p.name][have], None if sub.ref is None else sub.ref[have], n=sec.n,
                                    confidence=sec.confidence, generator=ws.generator(unit, "audit-probe", p.name))
            l2 = (points[p.name] - sub.x).reshape(len(certs), -1).norm(dim=1)
            for j, est in zip(have, ests):
                c = certs[j]
                rec = recomputed.get(p.kind, [None] * len(certs))[j]
                row = AuditProbeRow(
                    probe=p.name, radius_kind=p.kind, factor=p.factor, planted=p.planted,
                    radius=float(p.radii[j]),  # type: ignore[arg-type]
                    recomputed_radius=None if rec is None else float(rec), score=c.score,
                    lower=float(c.lower), upper=float(c.upper), alpha=cfg.alpha, attacked_median=est.point,
                    median_ci_low=est.low, median_ci_high=est.high, confidence=est.confidence,
                    attack_l2=float(l2[j]),
                    feature_change=premise[j].get(f"feature_change@{p.name}", math.nan),
                    feature_radius=premise[j].get("feature_radius", math.nan))
                out.append(record(row, unit, ids[todo[j]], p.name))
        return out

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

    def checks(self, data: RunData, cfg: RunConfig) -> list[Check]:
        from robustbench_iqa.analysis import audit

        sec = cfg.section(self.name)
        tests: list[tuple[str, Group, int, int, float, str]] = []  # (name, group, count, total, p0, what)
        out: list[Check] = []
        classified = self._classified(data)
        probes = dict(self._probes(data))
        for group, c in classified:
            certified = int((c["status"] != "abstained").sum())
            viol = int((c["status"] == "violation").sum())
            incon = int((c["status"] == "inconclusive").sum())
            p0 = judgement.allowed_rate(c, cfg)
            tests.append(("certificate audit", group, viol, certified, p0, "violations"))
            fc, fr = c["feature_change"].astype(float), c["feature_radius"].astype(float)
            has_premise = bool(np.isfinite(fc).any())
            if has_premise:
                failed = int(((fc > (1.0 + sec.premise_tolerance) * fr) & ~c["abstained"].astype(bool)).sum())
                tests.append(("premise", group, failed, certified, sec.max_premise_failure_rate,
                              f"feature change > {1 + sec.premise_tolerance:g} x radius"))
            narrow, checked = judgement.too_narrow(c)
            if checked:
                tests.append(("bounds recomputed", group, narrow, checked, p0,
                              "bounds narrower than the theorem's quantiles at x"))
            rate = incon / certified if certified else 0.0
            kind = judgement.eps_x_kind(group[1])
            out.append(Check("inconclusive", *group, rate <= sec.max_inconclusive_rate,
                             f"{RADIUS_WORDS.get(kind, kind)} eps_x: "
                             f"{incon}/{certified} = {rate:.1%} inconclusive after re-sampling "
                             f"(max {sec.max_inconclusive_rate:.0%})"))
        pvalues = [audit.binomial_upper_pvalue(k, n, p0) for _, _, k, n, p0, _ in tests]
        level = 1.0 - sec.level
        rejected = audit.holm(pvalues, level=level)
        eps_kind = {group: judgement.eps_x_kind(group[1]) for group, _ in classified}
        for (name, group, k, n, p0, what), p, rej in zip(tests, pvalues, rejected):
            where = "all radii (the interval is theirs)" if name == "bounds recomputed" else \
                f"{RADIUS_WORDS.get(eps_kind[group], eps_kind[group])} eps_x"
            detail = (f"{where}: "
                      + judgement.binomial_wording(k, n, p0, p, rej, what) + f", Holm over {len(tests)} tests at {level:g}") \
                if n else "no certified images to audit"
            out.append(Check(name, *group, not rej, detail))
        threshold = level / max(len(tests), 1)  # Holm's smallest threshold: a planted test passing it is seen
        for group, c in classified:
            rows = probes.get(group)
            base = eps_kind[group]
            kind = judgement.headline_kind(sec.radius, rows, base)
            claimed = [k for k in SOUND_KINDS if rows is not None and k in set(rows["radius_kind"])]
            out += self._sound_checks(group, rows)
            missing = kind in SOUND_KINDS and kind not in claimed
            words = RADIUS_WORDS.get(kind, kind)
            others = [RADIUS_WORDS.get(k, k) for k in [base, *claimed] if k != kind]
            out.append(Check("certified radius", *group, not missing,
                             f"this run certifies the {words}" + (
                                 f", which the certificates do not claim (they claim: {', '.join(claimed) or 'eps_x only'})"
                                 if missing else ("; also audited: " + ", ".join(others) if others else ""))))
            seen = self._detection(c, rows, sec, cfg, threshold)
            want = list(sec.require_detection)
            blind = [n for n in want if not seen.get(n, False)]  # one this run cannot evaluate is not seen
            text = "this run detects: " + ", ".join(f"{n} {'yes' if v else 'no'}" for n, v in seen.items())
            if want:
                text += f"; required: {', '.join(want)}" + (f" (not seen: {', '.join(blind)})" if blind else "")
            out.append(Check("detection power", *group, not blind, text))
        return out

    def _radii_table(self, data: RunData) -> Any:
        import pandas as pd

        rows: list[dict[str, Any]] = []
        for group, g in self._probes(data):
            rows += judgement.radii_table_rows(group, g)
        return pd.DataFrame(rows)

    def _probes(self, data: RunData) -> list[tuple[Group, Any]]:
        return [(group, audit_probes.classify(g)) for group, g in data.groups(AuditProbeRow)]

    @staticmethod
    def _sound_checks(group: Group, rows: Any) -> list[Check]:
        """Zero tolerance inside each claimed sound radius (see :mod:`audit_probes`)."""
        out: list[Check] = []
        if rows is None:
            return out
        honest = rows[~rows["planted"].astype(bool)]
        for kind in SOUND_KINDS:
            g = honest[honest["radius_kind"] == kind]
            if g.empty:
                continue
            bad = audit_probes.sound_failures(g)
            fc = (g["feature_change"].astype(float) / g["feature_radius"].astype(float)).to_numpy()
            worst = f"{np.nanmax(fc):.3g}" if np.isfinite(fc).any() else "n/a"
            p0 = float(((1 - g["alpha"].astype(float)) + 2 * (1 - g["confidence"].astype(float))).max())
            head = f"{RADIUS_WORDS[kind]}, audited with no tolerance on {len(g)} images: "
            if bad:
                detail = head + f"FAILS on {len(bad)}: " + "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
            else:
                detail = head + (f"no interval violation, largest feature change {worst} sigma_f, claimed radius "
                                 f"<= recomputed (a correct certificate shows a violation on an image with "
                                 f"probability <= {p0:.2g})")
            out.append(Check(f"sound radius ({kind})", *group, not bad, detail))
        return out

    def _detection(self, c: Any, rows: Any, sec: Any, cfg: RunConfig, threshold: float) -> dict[str, bool]:
        """Which planted wrong certificates this run's evidence shows to be wrong (see :mod:`audit_probes`).

        First-order probes and shrunk intervals on the eps_x evidence are judged by the family's own
        binomial tests at Holm's smallest threshold; sound probes and shrunk intervals inside a sound
        radius with no tolerance, as the honest sound radius is.
        """
        from robustbench_iqa.analysis import audit

        cert = c[c["status"] != "abstained"]
        n = len(cert)
        p0 = judgement.allowed_rate(c, cfg)

        def significant(k: int, p_allowed: float) -> bool:
            return n > 0 and audit.binomial_upper_pvalue(k, n, p_allowed) <= threshold

        seen: dict[str, bool] = {}
        for f in sec.plant_radius:
            name = f"first_order x{f:g}"
            g = None if rows is None else rows[rows["probe"] == name]
            if g is None or g.empty:
                continue
            viol = int((g["status"] == "violation").sum())
            fc, fr = g["feature_change"].astype(float), g["feature_radius"].astype(float)
            prem = int((fc > (1.0 + sec.premise_tolerance) * fr).sum())
            seen[name] = significant(viol, p0) or (bool(np.isfinite(fc).any())
                                                  and significant(prem, sec.max_premise_failure_rate))
        honest = None if rows is None else rows[~rows["planted"].astype(bool)]
        for f in sec.plant_shrink:
            s = audit_probes.shrunk(cert, f) if n else cert
            hit = significant(int((s["status"] == "violation").sum()), p0)
            narrow, checked = judgement.too_narrow(s)
            hit = hit or (checked > 0 and audit.binomial_upper_pvalue(narrow, checked, p0) <= threshold)
            if honest is not None and not honest.empty:
                hit = hit or bool((audit_probes.shrunk(honest, f)["status"] == "violation").any())
            seen[f"interval -{f:.0%}"] = hit
        if rows is not None:
            for kind in SOUND_KINDS:
                name = f"{kind} x{sec.plant_sound:g}"
                g = rows[rows["probe"] == name]
                if not g.empty:
                    seen[name] = bool(audit_probes.sound_failures(g))
        return seen

    def summary(self, data: RunData, cfg: RunConfig) -> dict[Group, dict[str, Any]]:
        sec = cfg.section(self.name)
        out: dict[Group, dict[str, Any]] = {}
        probes = dict(self._probes(data))
        for group, c in self._classified(data):
            cert = c[c["status"] != "abstained"]
            kind = judgement.headline_kind(sec.radius, probes.get(group), judgement.eps_x_kind(group[1]))
            row: dict[str, Any] = {
                "radius": kind,
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
        radii = self._radii_table(data)
        if not radii.empty:
            out.tables["radii"] = radii
            out.notes.append("radii: every radius the certificates claim (sound ones audited with no tolerance) "
                             "and the planted inflated ones (planted = True: evidence of the run's detection power)")
        out.notes.append(f"premise_failed counts feature changes above {1 + tol:g} x sigma_f inside the radius "
                         f"(the gate's rule, premise_tolerance = {tol:g})")
        return out


def _accepts(fn: Any, keyword: str) -> bool:
    """Whether ``fn`` takes ``keyword`` (a defense written before probes existed does not)."""
    import inspect

    try:
        return keyword in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _straddles(est: Any, cert: Any) -> bool:
    inside = est.low >= cert.lower and est.high <= cert.upper
    outside = est.high < cert.lower or est.low > cert.upper
    return not inside and not outside
