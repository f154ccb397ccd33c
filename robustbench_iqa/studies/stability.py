"""The stability study: how much does a randomized defense's output vary between runs?

Each of the first ``stability.limit`` images is predicted ``stability.repeats`` times
per sample count n of ``stability.n``, each repeat with its own seed (FS-IQA,
"Output stability": 0.06% for FS-IQA).  The gate fails a (model, defense, sigma)
whose mean relative standard deviation of repeated predictions at the run's n (or
the largest n studied) exceeds ``stability.max_deviation`` (a fraction: 0.01 is 1%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
    Unit,
    batched,
    finite,
    record,
    register_study,
)
from robustbench_iqa.validation import MAX_SAMPLES

if TYPE_CHECKING:
    from robustbench_iqa.studies.context import RunConfig, StudyPlan, StudyWorkspace


@dataclass(frozen=True)
class StabilityRow(Row):
    """One repeated prediction of one image at one sample count."""

    table = "stability"
    n: int = 0
    seed: int = 0
    score: float = finite(math.nan)


@dataclass(frozen=True)
class StabilityConfig:
    """``[tool.robustbench_iqa.verify.stability]``."""

    repeats: int = 10
    limit: int = 4
    """Images of the study."""
    n: tuple[int, ...] = (100, 500, 2000)
    max_deviation: float = 0.01

    def validate(self, where: str) -> None:
        if self.repeats < 2:
            raise InputError(f"{where}.repeats must be >= 2 (a deviation needs two predictions), got {self.repeats}")
        if self.limit < 1:
            raise InputError(f"{where}.limit must be >= 1, got {self.limit}")
        if not self.n or any(not 1 <= v <= MAX_SAMPLES for v in self.n):
            raise InputError(f"{where}.n must be sample counts in [1, {MAX_SAMPLES:,}], got {list(self.n)}")
        if not self.max_deviation >= 0:
            raise InputError(f"{where}.max_deviation must be >= 0, got {self.max_deviation}")


def gated_n(cfg: RunConfig, sec: StabilityConfig) -> int:
    """The n at which stability is gated: the run's n if studied, else the largest studied."""
    return cfg.n if cfg.n in sec.n else max(sec.n)


@register_study
class StabilityStudy(Study):
    name = "stability"
    title = "Output stability"
    summary_text = "Relative deviation of repeated predictions of one image with different seeds."
    tables = (StabilityRow,)
    Config = StabilityConfig

    def units(self, plan: StudyPlan) -> list[Unit]:
        cfg, sec = plan.cfg, plan.cfg.section(self.name)
        return [Unit(self.name, m, d, s, ids, f"n={n}")
                for m in cfg.models for d, s in cfg.defense_cases() for n in sec.n
                for ids in batched(plan.images(m, sec.limit), cfg.batch_size)]

    def run(self, unit: Unit, ws: StudyWorkspace) -> list[Record]:
        import torch

        sec = ws.cfg.section(self.name)
        defense = ws.defense(unit.model, unit.defense, unit.sigma)
        b = ws.batch(unit.model, unit.images)
        n = int(unit.part.split("=", 1)[1])
        out = []
        for r in range(sec.repeats):
            with torch.no_grad(), ws.timed("stability.predict"):
                s = defense.predict(b.x, b.ref, n=n, generator=ws.generator(unit, "repeat", r)).reshape(-1)
            out += [record(StabilityRow(n, r, float(s[i])), unit, image, f"n={n},seed={r}")
                    for i, image in enumerate(b.ids)]
        return out

    def _table(self, data: RunData) -> Any:
        import pandas as pd

        from robustbench_iqa.analysis import stability

        df = data.frame(StabilityRow)
        df = df[pd.to_numeric(df["score"], errors="coerce").map(math.isfinite)]  # others fail the finite check
        if df.empty:
            return None
        return stability.summarize(stability.per_image(df))

    def checks(self, data: RunData, cfg: RunConfig) -> list[Check]:
        sec = cfg.section(self.name)
        table = self._table(data)
        if table is None:
            return []
        n = gated_n(cfg, sec)
        out = []
        for _, r in table[table["n"] == n].iterrows():
            dev = float(r["rel_std_mean"])
            ok = math.isfinite(dev) and dev <= sec.max_deviation
            out.append(Check("stability", str(r["model"]), str(r["defense"]), float(r["sigma"]), ok,
                             f"mean relative std {dev:.4%} at n={n} (max {sec.max_deviation:.2%})"))
        return out

    def summary(self, data: RunData, cfg: RunConfig) -> dict[Group, dict[str, Any]]:
        table = self._table(data)
        if table is None:
            return {}
        n = gated_n(cfg, cfg.section(self.name))
        return {(str(r["model"]), str(r["defense"]), float(r["sigma"])): {"stability_%": 100 * float(r["rel_std_mean"])}
                for _, r in table[table["n"] == n].iterrows()}

    def report(self, data: RunData, options: ReportOptions) -> StudyOutput | None:
        from robustbench_iqa.analysis import figures, stability

        df = data.frame(StabilityRow)
        if df.empty:
            return None
        table = stability.stability_table(df)
        return StudyOutput(
            tables={"stability": table}, details={"images": stability.per_image(df)},
            figures={"stability": figures.stability_figure(table)},
            notes=["reported: mean over images of std/|mean| of repeated predictions (in %); "
                   "rel_max_* is the worst |s - mean|/|mean|"])
