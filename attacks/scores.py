"""Scores the IQA-robustness literature reports for an attack.

Scores are min-max normalized with the model's nominal ``score_range`` (pyiqa
metadata), f = (s - lo) / (hi - lo), and oriented so that a *gain* is a rise in
apparent quality (for a lower-better metric a fall of the raw score counts as
positive gain).  Per image, with clean score f(x) and attacked score f(x'):

* absolute gain  G_abs = q(x') - q(x), q = f (higher-better) or 1 - f (lower-better)
  (Antsiferova et al. 2024, "Comparing the robustness of modern no-reference
  image- and video-quality metrics to adversarial attacks", AAAI);
* relative gain  G_rel = sign * (s(x') - s(x)) / |s(x)| on the *raw* scores
  (the relative score change of FS-IQA Figure 4), NaN where |s(x)| ~ 0;
* robustness score (Zhang et al. 2022, used by Antsiferova et al. 2024)
  R = log10( max(1 - f(x), f(x)) / |f(x') - f(x)| ): the room the score had to
  move over how far it moved; higher is more robust.

|f(x') - f(x)| = 0 means infinite robustness.  Our choice: R is +inf for such
an image and it is **excluded** from the mean (the count is reported as
``n_unchanged``), so that one unmoved image does not make the mean infinite.
Each per-image score is averaged with a two-sided Student-t confidence interval,
mean +- t_{(1+c)/2, k-1} * sd / sqrt(k) (``scipy.stats.t``); NaN/inf entries are
dropped first.

**Integral score over budgets** (the suite's definition).  An attack run at
budgets e_1 < ... < e_K gives, per image, a curve v(e) of any per-image score
(absolute gain by default); its integral score is the mean height of that curve,

    I = (1 / (e_K - e_1)) * sum_{k<K} (e_{k+1} - e_k) (v(e_k) + v(e_{k+1})) / 2

(trapezoid rule), in the units of v, so one number ranks models over a whole
range of budgets instead of one point.  It is computed per image and averaged
with the same t-interval; an image with a non-finite value at any budget is
dropped.  :func:`summarize_budgets` gives, per budget, the three scores above and
the integral absolute and relative gains.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

from robustbench_iqa.errors import InputError

ZERO_SCORE = 1e-12


def _pair(clean: Sequence[float] | np.ndarray, adv: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c, a = np.asarray(clean, dtype=float).reshape(-1), np.asarray(adv, dtype=float).reshape(-1)
    if c.shape != a.shape:
        raise InputError(f"clean ({c.size}) and adversarial ({a.size}) scores differ in length")
    if not (np.isfinite(c).all() and np.isfinite(a).all()):
        raise InputError("scores contain NaN or Inf values")
    return c, a


def normalize(scores: np.ndarray, score_range: tuple[float, float]) -> np.ndarray:
    """Min-max normalization (s - lo) / (hi - lo)."""
    lo, hi = float(score_range[0]), float(score_range[1])
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise InputError(f"score_range must be finite with lo < hi, got {score_range!r}")
    return (np.asarray(scores, dtype=float) - lo) / (hi - lo)


def absolute_gain(clean: Any, adv: Any, *, score_range: tuple[float, float], lower_better: bool = False) -> np.ndarray:
    """Per-image normalized quality gain q(x') - q(x)."""
    c, a = _pair(clean, adv)
    d = normalize(a, score_range) - normalize(c, score_range)
    return -d if lower_better else d


def relative_gain(clean: Any, adv: Any, *, lower_better: bool = False) -> np.ndarray:
    """Per-image raw relative gain sign * (s' - s) / |s|; NaN where |s| <= 1e-12."""
    c, a = _pair(clean, adv)
    ok = np.abs(c) > ZERO_SCORE
    r = np.where(ok, (a - c) / np.where(ok, np.abs(c), 1.0), np.nan)
    return -r if lower_better else r


def robustness_score(clean: Any, adv: Any, *, score_range: tuple[float, float]) -> np.ndarray:
    """Per-image R = log10(max(1 - f, f) / |f' - f|) on normalized scores; +inf where f' == f."""
    c, a = _pair(clean, adv)
    f, fa = normalize(c, score_range), normalize(a, score_range)
    num = np.maximum(1.0 - f, f)
    den = np.abs(fa - f)
    with np.errstate(divide="ignore"):
        return np.where(den > 0, np.log10(num / np.where(den > 0, den, 1.0)), np.inf)


@dataclass(frozen=True)
class MeanCI:
    """Mean of the finite values, its t-interval, and how many values it used."""

    mean: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mean_ci(values: Any, *, confidence: float = 0.95) -> MeanCI:
    """Mean with a Student-t confidence interval; non-finite values are dropped.

    One value gives an interval of NaN; no value gives NaN throughout.
    """
    if not (0.0 < confidence < 1.0):
        raise InputError(f"confidence must lie in (0, 1), got {confidence!r}")
    v = np.asarray(values, dtype=float).reshape(-1)
    v = v[np.isfinite(v)]
    k = int(v.size)
    if k == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0)
    m = float(v.mean())
    if k == 1:
        return MeanCI(m, math.nan, math.nan, 1)
    half = float(stats.t.ppf((1 + confidence) / 2, k - 1) * v.std(ddof=1) / math.sqrt(k))
    return MeanCI(m, m - half, m + half, k)


@dataclass(frozen=True)
class RobustnessSummary:
    """The three averaged scores of a set of attacked images."""

    absolute_gain: MeanCI
    relative_gain: MeanCI
    robustness: MeanCI
    n_images: int
    n_unchanged: int
    confidence: float

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n_images": self.n_images, "n_unchanged": self.n_unchanged,
                               "confidence": self.confidence}
        for name in ("absolute_gain", "relative_gain", "robustness"):
            ci: MeanCI = getattr(self, name)
            out.update({name: ci.mean, f"{name}_low": ci.low, f"{name}_high": ci.high, f"{name}_n": ci.n})
        return out


def summarize(
    clean: Any, adv: Any, *, score_range: tuple[float, float], lower_better: bool = False,
    confidence: float = 0.95,
) -> RobustnessSummary:
    """Absolute gain, relative gain and robustness score, each as mean with a t-interval."""
    c, a = _pair(clean, adv)
    r = robustness_score(c, a, score_range=score_range)
    return RobustnessSummary(
        absolute_gain=mean_ci(absolute_gain(c, a, score_range=score_range, lower_better=lower_better),
                              confidence=confidence),
        relative_gain=mean_ci(relative_gain(c, a, lower_better=lower_better), confidence=confidence),
        robustness=mean_ci(r, confidence=confidence),
        n_images=int(c.size),
        n_unchanged=int(np.isinf(r).sum()),
        confidence=float(confidence),
    )


def integral_score(budgets: Sequence[float] | np.ndarray, values: Any) -> np.ndarray:
    """Per-image normalized trapezoid area of ``values`` (N, K) over increasing ``budgets`` (K,)."""
    e = np.asarray(budgets, dtype=float).reshape(-1)
    v = np.asarray(values, dtype=float)
    if v.ndim == 1:
        v = v.reshape(1, -1)
    if e.size < 2 or v.ndim != 2 or v.shape[1] != e.size:
        raise InputError(f"integral score needs K >= 2 budgets and values of shape (N, K); got K={e.size}, "
                         f"values {v.shape}")
    if not np.isfinite(e).all() or not (np.diff(e) > 0).all():
        raise InputError("budgets must be finite and strictly increasing")
    widths = np.diff(e)
    area = ((v[:, 1:] + v[:, :-1]) / 2 * widths).sum(axis=1)
    return area / (e[-1] - e[0])


@dataclass(frozen=True)
class BudgetSummary:
    """Scores of one attack at several budgets: one :class:`RobustnessSummary` per budget and the integrals."""

    budgets: tuple[float, ...]
    per_budget: tuple[RobustnessSummary, ...]
    integral_absolute_gain: MeanCI
    integral_relative_gain: MeanCI

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per budget (``eps`` first), then the integral row with ``eps = None``."""
        out: list[dict[str, Any]] = [{"eps": e, **s.to_dict()} for e, s in zip(self.budgets, self.per_budget)]
        integral: dict[str, Any] = {"eps": None}
        for name in ("integral_absolute_gain", "integral_relative_gain"):
            ci: MeanCI = getattr(self, name)
            integral.update({name: ci.mean, f"{name}_low": ci.low, f"{name}_high": ci.high, f"{name}_n": ci.n})
        return [*out, integral]


def summarize_budgets(
    budgets: Sequence[float], clean: Any, adv: Any, *, score_range: tuple[float, float],
    lower_better: bool = False, confidence: float = 0.95,
) -> BudgetSummary:
    """Per-budget summaries and integral scores of ``adv`` (N, K) attacked scores at ``budgets`` (K,).

    ``clean`` (N,) are the images' clean scores (the same at every budget).
    """
    e = np.asarray(budgets, dtype=float).reshape(-1)
    c = np.asarray(clean, dtype=float).reshape(-1)
    a = np.asarray(adv, dtype=float)
    if a.shape != (c.size, e.size):
        raise InputError(f"adv must have shape (images, budgets) = ({c.size}, {e.size}), got {a.shape}")
    order = np.argsort(e)
    e, a = e[order], a[:, order]
    per = tuple(summarize(c, a[:, k], score_range=score_range, lower_better=lower_better, confidence=confidence)
                for k in range(e.size))
    absg = np.stack([absolute_gain(c, a[:, k], score_range=score_range, lower_better=lower_better)
                     for k in range(e.size)], axis=1)
    relg = np.stack([relative_gain(c, a[:, k], lower_better=lower_better) for k in range(e.size)], axis=1)
    return BudgetSummary(
        tuple(float(v) for v in e), per,
        mean_ci(integral_score(e, absg), confidence=confidence),
        mean_ci(integral_score(e, relg), confidence=confidence),
    )
