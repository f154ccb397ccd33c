"""The source of a research repository's own plugin module, written outside the package by
``tests/test_plugins.py``: a model, a defense with a statistic of its own (a quantile), an
attack with an option of its own, and a study; each registers itself with its decorator."""

PLUGIN = '''
"""A research repository's IQA pieces, outside robustbench_iqa."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from scipy.stats import binom, norm
from torch import nn

from robustbench_iqa.attacks.gradient import IFGSM
from robustbench_iqa.attacks.registry import register_attack
from robustbench_iqa.certify.defense import DefenseMixin, Estimate, register_defense
from robustbench_iqa.certify.result import CertifiedScore, Guarantee
from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import IQAModel, Mode
from robustbench_iqa.models.registry import register_model
from robustbench_iqa.studies.base import Check, Row, Study, Unit, batched, finite, record, register_study


# ------------------------------------------------------------------- a model
class Contrast(IQAModel):
    """sigmoid(w . (per-channel standard deviation) - 0.8)."""

    name = "plugin-contrast"
    mode = Mode.NR
    lower_better = False
    score_range = (0.0, 1.0)

    def __init__(self, *, gain: float = 4.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.full((3,), gain / 3), requires_grad=False)

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return x.flatten(2).std(dim=2)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid((feats * self.w).sum(dim=1) - 0.8)


@register_model("plugin-contrast", mode="nr", lower_better=False, score_range=(0.0, 1.0))
def build_contrast(*, weights: Any = None, device: Any = None, gain: float = 4.0) -> Contrast:
    """A contrast score (plugin model)."""
    return Contrast(gain=gain).to(device or "cpu")


# ----------------------------------------------------------------- a defense
@dataclass(frozen=True)
class QuantileSettings:
    eps: float | None = None


def order_indices(n: int, *, p_lo: float, p_hi: float, a: float) -> tuple[int, int]:
    """1-based k_lo, k_hi with P(X_(k_lo) <= F^-1(p_lo)) >= 1 - a and P(X_(k_hi) >= F^-1(p_hi)) >= 1 - a."""
    k_lo, k_hi = int(binom.ppf(a, n, p_lo)), int(binom.ppf(1 - a, n, p_hi)) + 1
    if k_lo < 1 or k_hi > n:
        raise InputError(f"n={n} draws are too few for the quantile bounds")
    return k_lo, k_hi


def quantile_preflight(*, n: int, sigma: float, alpha: float, settings: Any) -> None:
    eps = settings.get("eps") or sigma / 2
    order_indices(n, p_lo=norm.cdf(-eps / sigma), p_hi=norm.cdf(eps / sigma), a=(1 - alpha) / 2)


class QuantileSmoothed(DefenseMixin, nn.Module):
    """The q-quantile of the model's score under N(0, sigma^2 I) input noise; certified by the
    percentile theorem (Chiang et al. 2020): within ||d||_2 <= eps the q-quantile at x + d lies
    between the quantiles of levels Phi(Phi^-1(q) -+ eps / sigma) at x."""

    certify_settings = QuantileSettings

    def __init__(self, model: IQAModel, *, sigma: float, q: float) -> None:
        super().__init__()
        if not 0 < q < 1:
            raise InputError(f"q must lie in (0, 1), got {q!r}")
        self.model, self.sigma, self.q = model, float(sigma), float(q)
        self.statistic = f"quantile-{q:g}"
        self.mode, self.lower_better, self.score_range = model.mode, model.lower_better, model.score_range
        self.name = f"quantile({model.name})"

    def eot_aggregate(self, v: torch.Tensor) -> torch.Tensor:
        """The q-th order statistic of the draws, differentiable through the sort."""
        k = min(v.shape[1] - 1, int(self.q * v.shape[1]))
        return v.sort(dim=1).values[:, k]

    def noisy_scores(self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        e = torch.randn((x.shape[0], n, *x.shape[1:]), generator=generator, device=x.device) * self.sigma
        z = (x[:, None] + e).clamp(0, 1).flatten(0, 1)
        r = None if ref is None else ref.repeat_interleave(n, dim=0)
        return self.model(z, r).reshape(x.shape[0], n)

    def predict(self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.eot_aggregate(self.noisy_scores(x, ref, n=n, generator=generator))

    def certify(self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int, alpha: float,
                generator: torch.Generator | None = None, eps: float | None = None) -> list[CertifiedScore]:
        eps = self.sigma / 2 if eps is None else float(eps)
        z = norm.ppf(self.q)
        k_lo, k_hi = order_indices(n, p_lo=norm.cdf(z - eps / self.sigma), p_hi=norm.cdf(z + eps / self.sigma),
                                   a=(1 - alpha) / 2)
        with torch.no_grad():
            v = self.noisy_scores(x, ref, n=n, generator=generator)
        s, srt = self.eot_aggregate(v), v.sort(dim=1).values
        return [CertifiedScore(float(s[i]), float(srt[i, k_lo - 1]), float(srt[i, k_hi - 1]), eps, False,
                               n=n, alpha=alpha, sigma=self.sigma, defense="quantile",
                               guarantee=Guarantee.PERCENTILE_BOUNDS) for i in range(x.shape[0])]

    def estimate(self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int, confidence: float,
                 generator: torch.Generator | None = None) -> list[Estimate]:
        with torch.no_grad():
            v = self.noisy_scores(x, ref, n=n, generator=generator)
        k_lo, k_hi = order_indices(n, p_lo=self.q, p_hi=self.q, a=(1 - confidence) / 2)
        s, srt = self.eot_aggregate(v), v.sort(dim=1).values
        return [Estimate(float(s[i]), float(srt[i, k_lo - 1]), float(srt[i, k_hi - 1]), n, confidence)
                for i in range(x.shape[0])]


@register_defense("quantile", space="input", statistic="quantile", preflight=quantile_preflight,
                  description="q-quantile smoothing under input noise (plugin)")
def create_quantile(model: IQAModel, *, sigma: float, q: float = 0.5) -> QuantileSmoothed:
    """Quantile smoothing around ``model``."""
    return QuantileSmoothed(model, sigma=sigma, q=q)


# ------------------------------------------------------------------ an attack
@register_attack("plugin-ifgsm", reference="a research repository",
                 description="I-FGSM whose steps shrink geometrically (plugin)")
class ShrinkingIFGSM(IFGSM):
    """I-FGSM with step t of size step_size * shrink^t."""

    name = "plugin-ifgsm"

    def __init__(self, *, eps: float, steps: int = 10, step_size: float | None = None, shrink: float = 0.8,
                 norm: str = "linf") -> None:
        super().__init__(eps=eps, steps=steps, step_size=step_size, norm=norm)
        self.shrink = float(shrink)

    def init_state(self, x0: torch.Tensor, ref: torch.Tensor | None) -> dict[str, Any]:
        return {"t": 0}

    def step(self, x: torch.Tensor, grad: torch.Tensor, alpha: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        state["t"] += 1
        return super().step(x, grad, alpha * self.shrink ** (state["t"] - 1), state)


# -------------------------------------------------------------------- a study
@dataclass(frozen=True)
class ContrastRow(Row):
    table = "contrast"
    contrast: float = finite(float("nan"))
    score: float = float("nan")


@dataclass(frozen=True)
class ContrastConfig:
    max_contrast: float = 1.0


@register_study
class ContrastStudy(Study):
    """Each image's contrast next to its defended score; fails if any exceeds max_contrast."""

    name = "contrast"
    title = "Contrast"
    tables = (ContrastRow,)
    Config = ContrastConfig
    default = False

    def units(self, plan: Any) -> list[Unit]:
        cfg = plan.cfg
        return [Unit(self.name, m, d, float(s), ids) for m in cfg.models for d, s in cfg.defense_cases()
                for ids in batched(plan.images(m), cfg.batch_size)]

    def run(self, unit: Unit, ws: Any) -> list[Any]:
        b = ws.batch(unit.model, unit.images)
        pred = ws.defense(unit.model, unit.defense, unit.sigma).predict(b.x, b.ref, n=20,
                                                                        generator=ws.generator(unit))
        return [record(ContrastRow(float(b.x[i].std()), float(pred[i])), unit, image)
                for i, image in enumerate(b.ids)]

    def checks(self, data: Any, cfg: Any) -> list[Check]:
        limit = cfg.section(self.name).max_contrast
        return [Check("contrast", *g, bool((df["contrast"] <= limit).all()), f"max {df['contrast'].max():.3f}")
                for g, df in data.groups(ContrastRow)]
'''

ENTRY_POINTS = """\
[robustbench_iqa.models]
plugin-contrast = iqa_plugin:build_contrast

[robustbench_iqa.defenses]
quantile = iqa_plugin:create_quantile

[robustbench_iqa.attacks]
plugin-ifgsm = iqa_plugin:ShrinkingIFGSM

[robustbench_iqa.studies]
contrast = iqa_plugin:ContrastStudy
"""
