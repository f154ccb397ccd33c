"""The accuracy study: the defended predictions again under further seeds.

FS-IQA Tables 1-2 report SRCC / PLCC as mean +- SEM across models; with
``accuracy.seeds`` the defended prediction of every image is repeated under each
seed (``correlation`` rows with ``extra="seed=<k>"``), so the table's mean and SEM
run across models *and* seeds.  Its rows are reported with the certify study's
correlation table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from robustbench_iqa.studies.base import Record, Study, Unit, batched, record, register_study
from robustbench_iqa.studies.certify import CorrelationRow, scale_of

if TYPE_CHECKING:
    from robustbench_iqa.studies.context import StudyPlan, StudyWorkspace


@dataclass(frozen=True)
class AccuracyConfig:
    """``[tool.robustbench_iqa.verify.accuracy]``."""

    seeds: tuple[int, ...] = ()
    """Further seeds of the defended predictions (the run's own seed is the certify study's)."""

    def validate(self, where: str) -> None:
        from robustbench_iqa.errors import InputError

        if any(not 0 <= s < 2**63 for s in self.seeds):
            raise InputError(f"{where}.seeds must lie in [0, 2**63), got {list(self.seeds)}")


@register_study
class AccuracyStudy(Study):
    name = "accuracy"
    title = "Accuracy over seeds"
    summary_text = "The defended predictions repeated under further seeds (reported with the correlation table)."
    tables = (CorrelationRow,)
    Config = AccuracyConfig

    def units(self, plan: StudyPlan) -> list[Unit]:
        cfg = plan.cfg
        seeds = [k for k in cfg.section(self.name).seeds if k != cfg.seed]
        return [Unit(self.name, m, d, s, ids, f"seed={k}")
                for m in cfg.models for d, s in cfg.defense_cases() for k in seeds
                for ids in batched(plan.images(m), cfg.batch_size)]

    def run(self, unit: Unit, ws: StudyWorkspace) -> list[Record]:
        import torch

        defense = ws.defense(unit.model, unit.defense, unit.sigma)
        b = ws.batch(unit.model, unit.images)
        seed = int(unit.part.split("=", 1)[1])
        with torch.no_grad(), ws.timed("accuracy.predict"):
            pred = defense.predict(b.x, b.ref, n=ws.cfg.n, generator=ws.generator(unit, "predict")).reshape(-1)
        return [record(CorrelationRow(float(pred[i]), b.targets[i], bool(defense.lower_better), batch=len(b),
                                      seed=seed, **scale_of(defense)), unit, image, unit.part)
                for i, image in enumerate(b.ids)]
