"""The beyond-certificate study: how far do scores move under attacks larger than eps_x?

FS-IQA ("Beyond Certified Guarantees", Figure 4) attacks the undefended and the
defended model with I-FGSM (L2, 10 iterations) at norms {0.02, 0.05, 0.1, 0.15,
0.2, 0.25} and plots the relative change of the score.  Here the first
``beyond.limit`` images of every model are attacked, raising the apparent quality:
the undefended model through its own gradient (once per model, ``defense="none"``);
each defense through EOT over its noise (its own aggregate of ``beyond.eot`` draws,
fresh noise per step) and scored by its prediction with the run's n draws (common
random numbers for the clean and the attacked image).  No check: this study
describes robustness, it certifies nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from robustbench_iqa.errors import InputError
from robustbench_iqa.studies.base import (
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

if TYPE_CHECKING:
    from robustbench_iqa.studies.context import RunConfig, StudyPlan, StudyWorkspace


@dataclass(frozen=True)
class BeyondRow(Row):
    """One image attacked at one norm: its clean and attacked (defended or undefended) scores."""

    table = "beyond"
    norm: float = 0.0
    clean: float = finite(math.nan)
    adv: float = finite(math.nan)
    l2: float = math.nan
    lower_better: bool = False


@dataclass(frozen=True)
class BeyondConfig:
    """``[tool.robustbench_iqa.verify.beyond]``."""

    norms: tuple[float, ...] = (0.02, 0.05, 0.1, 0.15, 0.2, 0.25)
    limit: int = 16
    steps: int = 10
    eot: int = 8

    def validate(self, where: str) -> None:
        if not self.norms or any(not v > 0 for v in self.norms):
            raise InputError(f"{where}.norms must be positive L2 norms, got {list(self.norms)}")
        for name in ("limit", "steps", "eot"):
            if getattr(self, name) < 1:
                raise InputError(f"{where}.{name} must be >= 1, got {getattr(self, name)}")


@register_study
class BeyondStudy(Study):
    name = "beyond"
    title = "Beyond the certificate"
    summary_text = "Relative score change under attacks larger than the certified radius (FS-IQA Figure 4)."
    tables = (BeyondRow,)
    Config = BeyondConfig

    def units(self, plan: StudyPlan) -> list[Unit]:
        cfg, sec = plan.cfg, plan.cfg.section(self.name)
        cases = [("none", 0.0), *cfg.defense_cases()]
        return [Unit(self.name, m, d, s, ids)
                for m in cfg.models for d, s in cases
                for ids in batched(plan.images(m, sec.limit), cfg.batch_size)]

    def run(self, unit: Unit, ws: StudyWorkspace) -> list[Record]:
        """Every norm on one batch; the clean scores are evaluated once (common random numbers)."""
        from robustbench_iqa.attacks.eot import eot_objective
        from robustbench_iqa.attacks.gradient import IFGSM
        from robustbench_iqa.attacks.objective import Objective, Target

        cfg, sec = ws.cfg, ws.cfg.section(self.name)
        b = ws.batch(unit.model, unit.images)
        step = f"beyond.attack-{'undefended' if unit.defense == 'none' else 'defended'}"
        clean = None
        out: list[Record] = []
        for k, norm in enumerate(sec.norms):
            gen = ws.generator(unit, "attack", f"l2={norm:g}")
            if unit.defense == "none":
                obj = Objective.from_model(ws.model(unit.model), target=Target.INCREASE)
            else:
                defense = ws.defense(unit.model, unit.defense, unit.sigma)
                obj = eot_objective(defense, n=sec.eot, aggregate=defense.eot_aggregate, generator=gen,
                                    target=Target.INCREASE, eval_n=cfg.n, eval_seed=cfg.seed)
            if clean is None:
                clean = obj.evaluate(b.x, b.ref)
            with ws.timed(step):
                res = IFGSM(eps=float(norm), steps=sec.steps, norm="l2").run(obj, b.x, b.ref, generator=gen,
                                                                             clean=clean)
            out += [record(BeyondRow(float(norm), r.clean_score, r.adv_score, r.l2, bool(obj.lower_better)), unit,
                           image, f"l2={norm:g}")
                    for image, r in zip(b.ids, res.records)]
            ws.tick((k + 1) / len(sec.norms))
        return out

    def summary(self, data: RunData, cfg: RunConfig) -> dict[Group, dict[str, Any]]:
        from robustbench_iqa.analysis import beyond

        df = data.frame(BeyondRow)
        if df.empty:
            return {}
        top = float(df["norm"].astype(float).max())
        at = df[df["norm"].astype(float) == top]

        def gain(rows: Any) -> float:
            return float(beyond.beyond_table(rows)["mean"].iloc[0]) if len(rows) else math.nan

        out: dict[Group, dict[str, Any]] = {}
        for (m, d, s), g in at.groupby(["model", "defense", "sigma"]):
            if d == "none":
                continue
            und = at[(at["model"] == m) & (at["defense"] == "none")]
            out[(str(m), str(d), float(s))] = {f"quality_gain@{top:g}_undefended": gain(und),
                                               f"quality_gain@{top:g}_defended": gain(g)}
        return out

    def report(self, data: RunData, options: ReportOptions) -> StudyOutput | None:
        from robustbench_iqa.analysis import beyond, figures

        df = data.frame(BeyondRow)
        if df.empty:
            return None
        table = beyond.beyond_table(df, confidence=options.confidence, method=options.interval, seed=options.seed)
        return StudyOutput(
            tables={"curves": table}, figures={"beyond": figures.beyond_figure(table)},
            notes=[f"bands: {options.confidence:g} {'Student-t' if options.interval == 't' else 'bootstrap'} "
                   "interval of the mean relative quality change (adv - clean)/|clean|, negated for "
                   "lower-is-better scores"])
