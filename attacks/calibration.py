"""Budget calibration: the largest budget at which an attack stays below a visible-quality floor.

An eps means different things for different attacks: a sign attack fills its
Linf ball, a texture-masked one leaves flat regions alone, a bounded one stops
at an SSIM floor.  The IQA robustness benchmarks therefore compare attacks at
budgets *calibrated* to the same visible quality.  :func:`calibrate_budget` finds,
for one attack, the largest eps in [lo, hi] whose attacked images keep

    reduce_i PSNR(x'_i, x_i) >= min_psnr   and/or   reduce_i SSIM(x'_i, x_i) >= min_ssim

(``reduce`` = mean or min over the images the attack changed; PSNR and SSIM of
:mod:`robustbench_iqa.attacks.similarity`).  Images returned unchanged (the best
iterate was the clean image) are left out: they would count as PSNR = +inf and
hide how visible the attack is where it acts.  A probe that changes no image
counts as infeasible: the attack does nothing at that budget (e.g. one FGSM step
that overshoots on every image), which is no budget to preset.  The search assumes the attacked quality
falls with eps and bisects log(eps) ``iterations`` times, running the attack once
per probe with a generator seeded by ``seed`` (the same start at every probe).
The result is the last feasible probe; hi itself is returned when it is feasible.

The preset table that this produced for the suite's attacks is in
:mod:`robustbench_iqa.attacks.presets`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from robustbench_iqa.attacks.base import Attack
from robustbench_iqa.attacks.objective import Objective
from robustbench_iqa.attacks.similarity import psnr, ssim
from robustbench_iqa.errors import InputError


@dataclass(frozen=True)
class QualityFloor:
    """A visible-quality constraint: PSNR and/or SSIM of the attacked image against the clean one."""

    min_psnr: float | None = None
    min_ssim: float | None = None

    def __post_init__(self) -> None:
        if self.min_psnr is None and self.min_ssim is None:
            raise InputError("a quality floor needs min_psnr and/or min_ssim")
        if self.min_ssim is not None and not (-1 < self.min_ssim < 1):
            raise InputError(f"min_ssim must lie in (-1, 1), got {self.min_ssim!r}")

    @property
    def name(self) -> str:
        parts = []
        if self.min_psnr is not None:
            parts.append(f"psnr{self.min_psnr:g}")
        if self.min_ssim is not None:
            parts.append(f"ssim{self.min_ssim:g}")
        return "+".join(parts)


FLOORS: dict[str, QualityFloor] = {
    "psnr40": QualityFloor(min_psnr=40.0),
    "ssim0.9": QualityFloor(min_ssim=0.9),
}
"""The floors of the preset table: PSNR >= 40 dB, SSIM >= 0.9."""


@dataclass(frozen=True)
class Calibration:
    """The calibrated budget and the quality it gave (reduced over the images)."""

    eps: float
    psnr: float
    ssim: float
    changed: int
    floor: str
    reduce: str
    probes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def visible_quality(adv: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image PSNR (dB, +inf if unchanged) and SSIM of ``adv`` against ``x``."""
    with torch.no_grad():
        return psnr(adv, x), ssim(adv, x)


def _reduce(v: torch.Tensor, how: str, *, empty: float) -> float:
    if v.numel() == 0:
        return empty
    if how == "min":
        return float(v.min())
    return float(v.mean())


def calibrate_budget(
    make_attack: Callable[[float], Attack], objective: Objective, x: torch.Tensor,
    ref: torch.Tensor | None = None, *, floor: QualityFloor, hi: float, lo: float | None = None,
    iterations: int = 10, reduce: str = "mean", seed: int = 0,
) -> Calibration:
    """The largest eps in [lo, hi] (lo default hi / 1000) meeting ``floor``; see the module doc."""
    if not (hi > 0 and math.isfinite(hi)):
        raise InputError(f"hi must be a finite budget > 0, got {hi!r}")
    lo = hi / 1000 if lo is None else float(lo)
    if not (0 < lo < hi):
        raise InputError(f"lo must lie in (0, hi), got {lo!r}")
    if reduce not in ("mean", "min"):
        raise InputError(f"reduce must be 'mean' or 'min', got {reduce!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise InputError(f"iterations must be a positive integer, got {iterations!r}")
    probes = 0

    def probe(eps: float) -> tuple[bool, Calibration]:
        nonlocal probes
        probes += 1
        gen = torch.Generator(device="cpu").manual_seed(seed)
        adv = make_attack(eps).run(objective, x, ref, generator=gen).adv
        p, s = visible_quality(adv, x)
        changed = torch.isfinite(p)
        p_red = _reduce(p[changed], reduce, empty=math.inf)
        s_red = _reduce(s[changed], reduce, empty=1.0)
        ok = (bool(changed.any()) and (floor.min_psnr is None or p_red >= floor.min_psnr)
              and (floor.min_ssim is None or s_red >= floor.min_ssim))
        return ok, Calibration(eps, p_red, s_red, int(changed.sum()), floor.name, reduce, probes)

    ok, cal = probe(hi)
    if ok:
        return cal
    ok, best = probe(lo)
    if not ok:
        raise InputError(f"even eps={lo:g} breaks the floor {floor.name} "
                         f"(PSNR {best.psnr:.2f} dB, SSIM {best.ssim:.4f})")
    a, b = math.log(lo), math.log(hi)
    for _ in range(iterations):
        mid = math.exp((a + b) / 2)
        ok, cal = probe(mid)
        if ok:
            a, best = math.log(mid), cal
        else:
            b = math.log(mid)
    return Calibration(best.eps, best.psnr, best.ssim, best.changed, best.floor, best.reduce, probes)
