"""The certify study: a certificate per image, and the scores with and without the defense.

Per unit (a batch of images of one model, defense and sigma): the undefended
score (``correlation`` rows with ``defense="none"``), the defended prediction in
no-certification mode with its time (``correlation``), and the certificate with
its time (``guarantee``: score, bounds, radius, the IVE's spectral norm, or an
explicit abstention).  Then every ``stage = "certify"`` study (the audit) runs on
the certified batch, reusing its clean pass and the certificates' evidence.

Times are seconds per image of a batched call (``batch`` images at once): the
per-image cost of batched evaluation, as the FS-IQA study's tables report it.

Check: the abstention rate of each (model, defense, sigma) is at most
``certify.max_abstain_rate``.  Report: SRCC/PLCC in the FS-IQA Tables 1-2 layout,
and the shape of the guarantee (bound width vs eps_x, FS-IQA Figure 3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from robustbench_iqa.studies.base import (
    Check,
    Group,
    Record,
    ReportOptions,
    Row,
    RunData,
    Study,
    StudyOutput,
    Unit,
    batched,
    finite,
    record,
    register_study,
)
from robustbench_iqa.studies.context import CertifiedBatch, Stopwatch

if TYPE_CHECKING:
    from robustbench_iqa.studies.context import RunConfig, StudyPlan, StudyWorkspace


@dataclass(frozen=True)
class CorrelationRow(Row):
    """A (defended or undefended) score of one image next to its subjective score."""

    table = "correlation"
    score: float = finite()
    target: float = math.nan
    lower_better: bool = False
    seconds_predict: float | None = None
    seconds_certify: float | None = None
    batch: int = 1
    seed: int | None = None
    orientation: str | None = None
    """``quality`` (higher is better) or ``distance`` (lower is better): :mod:`robustbench_iqa.orientation`."""
    score_range: tuple[float, float] | None = None
    """The nominal range of ``score`` (the model's, or the defense's scale)."""


@dataclass(frozen=True)
class GuaranteeRow(Row):
    """The certificate of one image (or its abstention)."""

    table = "guarantee"
    score: float = finite()
    lower: float | None = finite(None)
    upper: float | None = finite(None)
    eps_x: float | None = finite(None)
    abstained: bool = False
    reason: str | None = None
    spectral_norm: float | None = None
    guarantee: str = ""
    alpha: float = math.nan
    n: int = 0
    seconds: float | None = None
    batch: int = 1
    pixels: int = 0
    """H * W of the image: eps_x is an L2 norm over all 3*H*W values, so it grows with the
    image size; ``eps_x / sqrt(3 * pixels)`` is the per-value (RMS) radius."""
    eps_x_lipschitz: float | None = None
    """FS-IQA: sigma_f / L with L a certified Lipschitz bound of FTN o b (a theorem, no premise)."""
    eps_x_local: float | None = None
    """FS-IQA: a certified local radius (embedded models only, when asked for)."""
    lipschitz_bound: float | None = None
    confidence: float | None = None
    """The probability with which the certificate holds: alpha, or alpha - delta when eps_x rests
    on an upper bound of ||J_B(x)||_2 that fails with probability delta."""
    eps_x_first_order: float | None = None
    """FS-IQA: sigma_f / ||J_B(x)||_2 with the first-order (Lanczos) value, also when eps_x uses the bound."""
    orientation: str | None = None
    """Of ``score``, ``lower`` and ``upper``: ``quality`` or ``distance`` (:mod:`robustbench_iqa.orientation`)."""
    score_range: tuple[float, float] | None = None


def scale_of(scorer: Any) -> dict[str, Any]:
    """``orientation`` and ``score_range`` of the scores of ``scorer`` (a model or a defense)."""
    from robustbench_iqa.orientation import orientation_of

    lo, hi = scorer.score_range
    return {"orientation": orientation_of(lower_better=bool(scorer.lower_better)).value,
            "score_range": (float(lo), float(hi))}


def guarantee_row(c: Any, *, alpha: float, n: int, seconds: float, batch: int, pixels: int,
                  scorer: Any = None) -> GuaranteeRow:
    """The stored row of a :class:`~robustbench_iqa.certify.result.CertifiedScore` (``scorer``: the
    defense that made it, whose orientation and range the row records)."""
    return GuaranteeRow(
        score=c.score, lower=c.lower, upper=c.upper, eps_x=c.eps_x, abstained=c.abstained,
        reason=c.reason.value if c.reason else None, spectral_norm=c.spectral_norm, guarantee=c.guarantee.value,
        alpha=alpha, n=n, seconds=seconds, batch=batch, pixels=pixels,
        eps_x_lipschitz=getattr(c, "eps_x_lipschitz", None), eps_x_local=getattr(c, "eps_x_local", None),
        lipschitz_bound=getattr(c, "lipschitz_bound", None),
        confidence=c.confidence if getattr(c, "confidence", None) is not None else alpha,
        eps_x_first_order=getattr(c, "eps_x_first_order", None), **(scale_of(scorer) if scorer is not None else {}))


@dataclass(frozen=True)
class CertifyConfig:
    """``[tool.robustbench_iqa.verify.certify]``."""

    max_abstain_rate: float = 0.2
    """The gate fails a (model, defense, sigma) whose abstention rate is above this."""

    def validate(self, where: str) -> None:
        from robustbench_iqa.errors import InputError

        if not 0 <= self.max_abstain_rate <= 1:
            raise InputError(f"{where}.max_abstain_rate must lie in [0, 1], got {self.max_abstain_rate}")


def _main_radius_kind(defense: object) -> str:
    """What ``eps_x`` is for ``defense``: FS-IQA's (feature-space) radius is the first-order IVE
    estimate; an input-space defense certifies its input radius directly."""
    from robustbench_iqa.certify.defense import DEFENSES

    name = str(defense)
    space = DEFENSES.metadata(name).get("space") if name in DEFENSES else None
    return "first-order" if space == "feature" else "input radius" if space == "input" else "eps_x"


@register_study
class CertifyStudy(Study):
    name = "certify"
    title = "Certificates and accuracy"
    summary_text = ("A certificate per image (bounds, radius or an explicit abstention), and SRCC / PLCC of "
                    "the defended scores in the FS-IQA Tables 1-2 layout.")
    tables = (CorrelationRow, GuaranteeRow)
    Config = CertifyConfig

    def units(self, plan: StudyPlan) -> list[Unit]:
        cfg = plan.cfg
        return [Unit(self.name, m, d, s, ids)
                for m in cfg.models for d, s in cfg.defense_cases()
                for ids in batched(plan.images(m), cfg.batch_size)]

    def run(self, unit: Unit, ws: StudyWorkspace) -> list[Record]:
        return self.run_stage(unit, ws)[0]

    def run_stage(self, unit: Unit, ws: StudyWorkspace) -> tuple[list[Record], CertifiedBatch | None]:
        """The certify rows of one unit, and the certified batch that ``stage = "certify"`` studies
        (the audit) receive from the runner; None for an empirical defense (nothing certified)."""
        import torch

        from robustbench_iqa.certify.defense import settings_from

        cfg = ws.cfg
        model, defense = ws.model(unit.model), ws.defense(unit.model, unit.defense, unit.sigma)
        b = ws.batch(unit.model, unit.images)
        ws.warm_up(unit.model, unit.defense, unit.sigma, b)
        k = len(b)
        with torch.no_grad(), ws.timed("certify.clean"), Stopwatch(ws.device) as t_model:
            clean = model(b.x, b.ref).reshape(-1).detach()
        with ws.timed("certify.predict"), Stopwatch(ws.device) as t_predict:
            pred = defense.predict(b.x, b.ref, n=cfg.n, generator=ws.generator(unit, "predict")).reshape(-1)
        certified = cfg.certified(unit.defense)  # an empirical defense is scored, not certified
        certs = []
        if certified:
            settings = {**settings_from(defense, {**cfg.globals()}), **cfg.defense_table(unit.defense).certify}
            with ws.timed("certify.certify"), Stopwatch(ws.device) as t_certify:
                certs = defense.certify(b.x, b.ref, n=cfg.n, alpha=cfg.alpha,
                                        generator=ws.generator(unit, "certify"), **settings)
        ws.tick(0.5)
        out: list[Record] = []
        first = (unit.defense, unit.sigma) == cfg.defense_cases()[0]
        pixels = int(b.x.shape[-1] * b.x.shape[-2])
        for i, image in enumerate(b.ids):
            if first:  # the undefended scores, once per image
                out.append(record(CorrelationRow(float(clean[i]), b.targets[i], bool(model.lower_better),
                                                 t_model.seconds / k, None, k, **scale_of(model)), unit, image,
                                  defense="none", sigma=0.0))
            out.append(record(CorrelationRow(float(pred[i]), b.targets[i], bool(defense.lower_better),
                                             t_predict.seconds / k, t_certify.seconds / k if certified else None,
                                             k, cfg.seed, **scale_of(defense)),
                              unit, image))
            if certified:
                out.append(record(guarantee_row(certs[i], alpha=cfg.alpha, n=cfg.n, seconds=t_certify.seconds / k,
                                                batch=k, pixels=pixels, scorer=defense), unit, image))
        if not certified:
            return out, None
        return out, CertifiedBatch(unit, model, defense, b, certs, clean)

    # ------------------------------------------------------------ judgement
    def checks(self, data: RunData, cfg: RunConfig) -> list[Check]:
        limit = cfg.section(self.name).max_abstain_rate
        out = []
        for (m, d, s), g in data.groups(GuaranteeRow):
            k, n = int(g["abstained"].astype(bool).sum()), len(g)
            rate = k / n
            out.append(Check("abstentions", m, d, s, rate <= limit,
                             f"{k}/{n} = {rate:.1%} abstained (max {limit:.1%})"))
        return out

    def summary(self, data: RunData, cfg: RunConfig) -> dict[Group, dict[str, Any]]:
        import pandas as pd

        out: dict[Group, dict[str, Any]] = {}
        corr = data.frame(CorrelationRow)
        for group, g in data.groups(GuaranteeRow):
            cert = g[~g["abstained"].astype(bool)]
            width = (cert["upper"].astype(float) - cert["lower"].astype(float))
            eps = cert["eps_x"].astype(float)
            row: dict[str, Any] = {
                "images": len(g), "abstained": len(g) - len(cert),
                "mean_width": float(width.mean()) if len(cert) else math.nan,
                "median_eps_x": float(eps.median()) if len(cert) else math.nan,
            }
            if len(cert):
                rms = eps / (3.0 * cert["pixels"].astype(float)).pow(0.5)
                row["median_eps_x_per_value"] = float(rms.median())
                lip = pd.to_numeric(cert["eps_x_lipschitz"], errors="coerce")
                if lip.notna().any():
                    row["median_eps_x_lipschitz"] = float(lip.median())
            m, d, s = group
            c2 = corr[(corr["model"] == m) & (corr["defense"] == d) & (corr["sigma"] == s)]
            if len(c2):
                row["s/img_predict"] = float(c2["seconds_predict"].astype(float).mean())
                row["s/img_certify"] = float(c2["seconds_certify"].astype(float).mean())
            out[group] = row
        return out

    def report(self, data: RunData, options: ReportOptions) -> StudyOutput | None:
        import pandas as pd

        from robustbench_iqa.analysis import correlation, figures, guarantee

        out = StudyOutput()
        corr = data.frame(CorrelationRow)
        if not corr.empty:
            groups = correlation.per_group(corr)
            summary = correlation.summarize(groups)
            out.tables.update({"correlation": correlation.correlation_table(corr), "correlation_summary": summary})
            out.details["correlation_groups"] = groups
            out.figures["correlation"] = figures.correlation_figure(summary)
            failed = int((~groups["logistic_ok"].astype(bool)).sum())
            if failed:
                out.notes.append(f"the logistic fit failed in {failed} group(s); raw PLCC used there")
        gq = data.frame(GuaranteeRow)
        if not gq.empty:
            table = guarantee.guarantee_table(gq, bins=options.bins)
            variants = data.config.get("defense") or {}  # [verify.defense.<variant>] defense = "..."
            kinds = [table.assign(radius=table["defense"].map(
                lambda d: _main_radius_kind((variants.get(d) or {}).get("defense", d))))]
            for col, kind in (("eps_x_lipschitz", "lipschitz"), ("eps_x_local", "local")):
                radii = pd.to_numeric(gq[col], errors="coerce")
                if radii.notna().any():  # a sound radius beside the first-order one (FS-IQA Figure 3, per kind)
                    rows = gq[radii.notna()].assign(eps_x=radii[radii.notna()])
                    kinds.append(guarantee.guarantee_table(rows, bins=options.bins).assign(radius=kind))
            table = pd.concat(kinds, ignore_index=True)
            out.tables["guarantee_bins"] = table
            out.details["guarantee_images"] = gq
            if not table.empty:
                shown = table.assign(defense=table["defense"].astype(str) + " (" + table["radius"] + ")") \
                    if len(kinds) > 1 else table
                out.figures["guarantee"] = figures.guarantee_figure(shown)
            out.notes.append("eps_x is an L2 norm over all 3*H*W pixel values: it grows with the image size "
                             "(eps_x / sqrt(3*H*W) is the per-value RMS radius)")
        return out if (out.tables or out.figures) else None
