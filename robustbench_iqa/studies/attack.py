"""The attack study: rows of ``robustbench-iqa attack --out RUN_DIR``, and their report section.

One row per image and attack setting (``extra`` = ``"<attack>,<norm>=<eps>,<target>"``):
the clean and attacked scores (the defense's prediction when a defense is attacked),
the perturbation's norms and the steps taken.  The report shows, per (model,
defense, attack, norm, eps), the absolute and relative gain and the robustness
score with Student-t confidence intervals (:mod:`robustbench_iqa.attacks.scores`).
Not part of ``verify`` (the beyond study is the gate's attack study).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from robustbench_iqa.studies.base import (
    ReportOptions,
    Row,
    RunData,
    Study,
    StudyOutput,
    finite,
    register_study,
)


@dataclass(frozen=True)
class AttackRow(Row):
    """One attacked image."""

    table = "attack"
    clean_score: float = finite(math.nan)
    adv_score: float = finite(math.nan)
    l2: float = math.nan
    linf: float = math.nan
    iterations: int = 0
    gain: float = math.nan
    attack: str = ""
    norm: str = ""
    eps: float = math.nan
    target: str = ""
    lower_better: bool = False
    score_range: tuple[float, float] = (0.0, 1.0)
    flags: str = ""
    """Attack-strength flags of this image, comma-separated (:mod:`robustbench_iqa.attacks.checks`)."""
    improvement: float = math.nan
    evaluations: int = 0
    zero_grad_steps: int = 0
    nonfinite_grad_steps: int = 0
    eot_spread: float | None = None


@register_study
class AttackStudy(Study):
    name = "attack"
    title = "Attacks"
    summary_text = "Gain and robustness score of each attack setting, with confidence intervals."
    tables = (AttackRow,)
    default = False

    def report(self, data: RunData, options: ReportOptions) -> StudyOutput | None:
        import pandas as pd

        from robustbench_iqa.attacks.scores import summarize

        df = data.frame(AttackRow)
        if df.empty:
            return None
        rows = []
        for key, g in df.groupby(["model", "defense", "attack", "norm", "eps", "target"], sort=True):
            rng = tuple(g["score_range"].iloc[0])
            s = summarize(g["clean_score"].astype(float), g["adv_score"].astype(float), score_range=rng,  # type: ignore[arg-type]
                          lower_better=bool(g["lower_better"].iloc[0]), confidence=options.confidence)
            rows.append({**dict(zip(["model", "defense", "attack", "norm", "eps", "target"], key)),
                         **s.to_dict()})
            flags = [f for v in g["flags"].fillna("").astype(str) for f in v.split(",") if f]
            rows[-1]["flags"] = ", ".join(f"{f} {flags.count(f)}" for f in sorted(set(flags))) or "none"
        return StudyOutput(tables={"summary": pd.DataFrame(rows)}, details={"images": df},
                           notes=["flags: attack-strength checks per image (no-progress, zero-gradient, "
                                  "nonfinite-gradient, eot-disagreement, black-box-stronger); a flagged attack "
                                  "may understate the defense's weakness"])
