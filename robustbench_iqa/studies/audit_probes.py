"""Every radius a certificate claims, and planted wrong certificates, audited on the same images.

A certificate may claim several radii for one interval [lower, upper] (FS-IQA: the first-order
``eps_x``, an estimate, and the sound ``eps_x_lipschitz`` / ``eps_x_local``, theorems; see
:class:`~robustbench_iqa.certify.result.RadiusKind`).  The audit study's score attack and feature
attack run inside ``eps_x``; this module turns their results into evidence at other radii, without
new attacks:

* a **probe** is a radius per image: a claimed sound radius (``"lipschitz"``, ``"local"``), or a
  planted one (``"first_order x1.5"``: eps_x inflated 1.5 times; ``"lipschitz x2"``);
* at each probe the kept attacked point is rescaled onto the probe's sphere
  (x + d r / ||d||, clipped to [0, 1]: inside the r-ball) and the defended statistic is estimated
  there with the audit's ``n`` and confidence; the feature change is measured at that point and at
  the rescaled best feature-attack perturbation (the defense's ``audit_premise``);
* a sound radius is a deterministic theorem, so the defense recomputes it from the model
  (``sound_radii``); a claim above the recomputed value is wrong whatever the attacks find.

Judgement (:func:`sound_failures`, :func:`shrunk`): inside a sound radius nothing is tolerated:
an interval violation, a feature change above ``sigma_f (1 + 1e-6)`` (float tolerance only) or a
claim above the recomputed radius fails the gate and names the image.  A correct certificate
still shows an interval violation on an image with probability at most
(1 - alpha) + 2 (1 - c) (its own error and the estimate's two-sided miss), so this family has a
false-alarm probability of at most that times the number of images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from robustbench_iqa.studies.base import Row

SOUND_KINDS = ("lipschitz", "local")
"""The radius kinds that are theorems (no premise left to estimate)."""
FLOAT_TOLERANCE = 1e-6
"""Relative tolerance of the sound-radius checks: floating-point error only."""


@dataclass(frozen=True)
class AuditProbeRow(Row):
    """Evidence at one probe radius of one image (``extra`` key: the probe name)."""

    table = "audit_probe"
    probe: str = ""
    radius_kind: str = ""
    """``first_order``, ``lipschitz`` or ``local``: the kind of radius the probe stands for."""
    factor: float = 1.0
    planted: bool = False
    """True for a deliberately wrong (inflated) radius: evidence of the run's detection power."""
    radius: float = math.nan
    recomputed_radius: float | None = None
    """Sound kinds: the radius recomputed from the model (the certificate's claim must not exceed it)."""
    score: float = math.nan
    lower: float = math.nan
    upper: float = math.nan
    alpha: float = math.nan
    attacked_median: float = math.nan
    median_ci_low: float = math.nan
    median_ci_high: float = math.nan
    confidence: float = math.nan
    attack_l2: float = math.nan
    feature_change: float = math.nan
    feature_radius: float = math.nan


@dataclass(frozen=True)
class Probe:
    """A radius per audited image: ``kind`` scaled by ``factor`` (planted when factor != 1)."""

    name: str
    kind: str
    factor: float
    radii: list[float | None]

    @property
    def planted(self) -> bool:
        return self.factor != 1.0


def claimed_radius(cert: Any, kind: str) -> float | None:
    """The radius of ``kind`` a certificate claims (``first_order``: its ``eps_x``)."""
    v = cert.eps_x if kind == "first_order" else getattr(cert, f"eps_x_{kind}", None)
    return float(v) if v is not None and math.isfinite(float(v)) and float(v) > 0 else None


def probes(certs: Sequence[Any], *, inflate: Sequence[float], inflate_sound: float) -> list[Probe]:
    """The honest sound radii the certificates claim and the planted inflated ones."""
    out = [Probe(f"first_order x{f:g}", "first_order", float(f), [_times(claimed_radius(c, "first_order"), f)
                                                                  for c in certs]) for f in inflate]
    for kind in SOUND_KINDS:
        radii = [claimed_radius(c, kind) for c in certs]
        if any(r is not None for r in radii):
            out.append(Probe(kind, kind, 1.0, radii))
            out.append(Probe(f"{kind} x{inflate_sound:g}", kind, float(inflate_sound),
                             [_times(r, inflate_sound) for r in radii]))
    return out


def _times(r: float | None, f: float) -> float | None:
    return None if r is None else r * f


def rescaled_points(x: Any, attacked: Any, radii: Sequence[float | None]) -> Any:
    """x + d r / ||d||_2 with d = attacked - x, clipped to [0, 1] (images without a radius: x)."""
    import torch

    d = attacked - x
    r = torch.tensor([0.0 if v is None else float(v) for v in radii], device=x.device, dtype=x.dtype)
    norm = d.reshape(d.shape[0], -1).norm(dim=1).clamp_min(1e-30)
    return (x + d * (r / norm).reshape(-1, *([1] * (d.dim() - 1)))).clamp(0.0, 1.0)


# ----------------------------------------------------------------- judgement
def _status(lower: np.ndarray, upper: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    outside = (hi < lower) | (lo > upper)
    inside = (lo >= lower) & (hi <= upper)
    return np.where(outside, "violation", np.where(inside, "holds", "inconclusive"))


def shrunk(rows: pd.DataFrame, fraction: float) -> pd.DataFrame:
    """The rows with [lower, upper] shrunk around ``score`` by ``fraction`` and re-classified.

    The planted interval is score - (1 - f)(score - lower) .. score + (1 - f)(upper - score):
    the attacked points were found for the wider interval, so they remain valid evidence against it.
    """
    score = rows["score"].astype(float).to_numpy()
    lower = score - (1.0 - fraction) * (score - rows["lower"].astype(float).to_numpy())
    upper = score + (1.0 - fraction) * (rows["upper"].astype(float).to_numpy() - score)
    lo, hi = rows["median_ci_low"].astype(float).to_numpy(), rows["median_ci_high"].astype(float).to_numpy()
    out = rows.assign(lower=lower, upper=upper)
    out["status"] = _status(lower, upper, lo, hi)
    return out


def classify(rows: pd.DataFrame) -> pd.DataFrame:
    """``status`` (holds / inconclusive / violation) of each probe row; rows without an estimate: ``missing``."""
    lo, hi = rows["median_ci_low"].astype(float).to_numpy(), rows["median_ci_high"].astype(float).to_numpy()
    st = _status(rows["lower"].astype(float).to_numpy(), rows["upper"].astype(float).to_numpy(), lo, hi)
    ok = np.isfinite(lo) & np.isfinite(hi)
    return rows.assign(status=np.where(ok, st, "missing"))


def sound_failures(rows: pd.DataFrame) -> list[str]:
    """Per image, why a sound radius is wrong (empty: nothing found).  ``rows``: classified probe rows."""
    out = []
    for _, r in rows.iterrows():
        why = []
        if r["status"] == "violation":
            why.append(f"attacked median {float(r['attacked_median']):.4g} with interval "
                       f"[{float(r['median_ci_low']):.4g}, {float(r['median_ci_high']):.4g}] outside "
                       f"[{float(r['lower']):.4g}, {float(r['upper']):.4g}]")
        fc, fr = float(r["feature_change"]), float(r["feature_radius"])
        if math.isfinite(fc) and math.isfinite(fr) and fc > fr * (1.0 + FLOAT_TOLERANCE):
            why.append(f"feature change {fc / fr:.4g} sigma_f")
        rec = r.get("recomputed_radius")
        rec = math.nan if rec is None else float(rec)
        if math.isfinite(rec) and float(r["radius"]) > rec * (1.0 + FLOAT_TOLERANCE):
            why.append(f"claimed radius {float(r['radius']) / rec:.4g} x the recomputed {rec:.4g}")
        if why:
            out.append(f"{r['image']} ({'; '.join(why)})")
    return out
