"""Correlation with subjective scores: SRCC, KRCC, PLCC raw and after a logistic map.

PLCC is reported, as is standard in IQA (VQEG, "Final report from the Video
Quality Experts Group on the validation of objective models of video quality
assessment", 2000/2003), after fitting the 4-parameter logistic

    f(x) = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2

from predictions ``x`` to subjective scores ``y`` by least squares.  f is
monotone, so SRCC and KRCC are unchanged by it.  The fit starts from
``b1 = max(y), b2 = min(y)`` (swapped for a decreasing relation), ``b3 =
median(x)``, ``b4 = std(x)``; if it does not converge the PLCC of the raw
predictions is reported instead and ``logistic_ok`` is False.

Across models and seeds the per-group correlations are averaged and shown as
mean +- SEM, in the layout of FS-IQA Tables 1-2 (rows: defenses; columns:
sigma in {0.1, 0.25, 0.5}, each "SRCC / PLCC"; plus seconds per image with and
without certification).

Per-image input frame (one row per image and prediction):
    ``model, defense, sigma, image, score, target`` and optionally ``seed``,
    ``seconds_predict``, ``seconds_certify`` and ``lower_better``.  Rows with
    ``lower_better`` true (a distance such as LPIPS or DISTS) are correlated as
    ``-score``, so that every correlation reads "higher is better agreement" and
    NR and FR metrics can be averaged (the literature reports |SRCC| for them).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from robustbench_iqa.analysis._common import (
    as_float_array,
    fmt_pm,
    mean_sem,
    present,
    require_columns,
)
from robustbench_iqa.errors import InputError

PAPER_SIGMAS = (0.1, 0.25, 0.5)
METRICS = ("srcc", "plcc", "plcc_logistic", "krcc")
MIN_PAIRS = 3


def _pairs(pred: object, target: object) -> tuple[np.ndarray, np.ndarray]:
    x = as_float_array(pred, "predictions").ravel()
    y = as_float_array(target, "targets").ravel()
    if x.shape != y.shape:
        raise InputError(f"predictions ({x.size}) and targets ({y.size}) differ in length")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def _safe(fn: object, x: np.ndarray, y: np.ndarray) -> float:
    if x.size < MIN_PAIRS or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan  # undefined for constant inputs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(fn(x, y)[0])  # type: ignore[operator]


def srcc(pred: object, target: object) -> float:
    """Spearman rank-order correlation (NaN if fewer than 3 pairs or constant)."""
    return _safe(stats.spearmanr, *_pairs(pred, target))


def krcc(pred: object, target: object) -> float:
    """Kendall rank correlation, tau-b (NaN if fewer than 3 pairs or constant)."""
    return _safe(stats.kendalltau, *_pairs(pred, target))


def plcc(pred: object, target: object) -> float:
    """Pearson linear correlation of the raw predictions."""
    return _safe(stats.pearsonr, *_pairs(pred, target))


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """VQEG 4-parameter logistic ``(b1 - b2) / (1 + exp(-(x - b3)/|b4|)) + b2``."""
    z = np.clip(-(np.asarray(x, dtype=float) - b3) / max(abs(b4), 1e-12), -700, 700)
    return (b1 - b2) / (1.0 + np.exp(z)) + b2


@dataclass(frozen=True)
class LogisticFit:
    """Result of :func:`fit_logistic4`: parameters (b1..b4) or None, and whether it converged."""

    params: tuple[float, float, float, float] | None
    ok: bool
    message: str = ""

    def __call__(self, x: object) -> np.ndarray:
        arr = as_float_array(x, "x")
        if self.params is None:
            return arr
        return logistic4(arr, *self.params)


def fit_logistic4(pred: object, target: object, *, maxfev: int = 20000) -> LogisticFit:
    """Least-squares fit of :func:`logistic4` from predictions to targets."""
    x, y = _pairs(pred, target)
    if x.size < 5:
        return LogisticFit(None, False, f"need at least 5 pairs for 4 parameters, have {x.size}")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return LogisticFit(None, False, "constant predictions or targets")
    hi, lo = float(y.max()), float(y.min())
    if _safe(stats.pearsonr, x, y) < 0:
        hi, lo = lo, hi
    p0 = [hi, lo, float(np.median(x)), float(x.std()) or 1.0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            params, _ = optimize.curve_fit(logistic4, x, y, p0=p0, maxfev=maxfev)
    except (RuntimeError, ValueError, optimize.OptimizeWarning) as exc:
        return LogisticFit(None, False, f"logistic fit failed: {exc}")
    fitted = logistic4(x, *params)
    if not (np.all(np.isfinite(params)) and np.all(np.isfinite(fitted))):
        return LogisticFit(None, False, "logistic fit gave non-finite values")
    b1, b2, b3, b4 = (float(v) for v in params)
    return LogisticFit((b1, b2, b3, b4), True)


def plcc_logistic(pred: object, target: object) -> tuple[float, bool]:
    """PLCC after the 4-parameter logistic map, and whether the fit succeeded.

    When the fit fails the raw PLCC is returned with ``False``.
    """
    x, y = _pairs(pred, target)
    fit = fit_logistic4(x, y)
    if not fit.ok:
        return _safe(stats.pearsonr, x, y), False
    return _safe(stats.pearsonr, fit(x), y), True


@dataclass(frozen=True)
class Correlations:
    srcc: float
    plcc: float
    plcc_logistic: float
    krcc: float
    n: int
    logistic_ok: bool


def correlations(pred: object, target: object) -> Correlations:
    """All four correlations of one set of predictions with subjective scores."""
    x, y = _pairs(pred, target)
    pl, ok = plcc_logistic(x, y)
    return Correlations(
        srcc=_safe(stats.spearmanr, x, y),
        plcc=_safe(stats.pearsonr, x, y),
        plcc_logistic=pl,
        krcc=_safe(stats.kendalltau, x, y),
        n=int(x.size),
        logistic_ok=ok,
    )


def per_group(
    df: pd.DataFrame,
    *,
    by: Sequence[str] = ("model", "defense", "sigma", "seed"),
    prediction: str = "score",
    target: str = "target",
) -> pd.DataFrame:
    """Correlations for every group of ``by`` (keys absent from ``df`` are skipped)."""
    require_columns(df, [prediction, target], "correlation study")
    if "lower_better" in df:
        flip = df["lower_better"].fillna(0).astype(bool)
        df = df.assign(**{prediction: np.where(flip, -df[prediction].astype(float), df[prediction].astype(float))})
    keys = present(df, by)
    rows = []
    for key, g in df.groupby(keys, sort=True, dropna=False) if keys else [((), df)]:
        key = key if isinstance(key, tuple) else (key,)
        rows.append({**dict(zip(keys, key)), **asdict(correlations(g[prediction], g[target]))})
    return pd.DataFrame(rows)


def summarize(groups: pd.DataFrame, *, by: Sequence[str] = ("defense", "sigma")) -> pd.DataFrame:
    """Mean, SEM and count of each metric across the remaining keys (models, seeds)."""
    keys = present(groups, by)
    rows = []
    for key, g in groups.groupby(keys, sort=True) if keys else [((), groups)]:
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, object] = dict(zip(keys, key))
        for m in METRICS:
            mean, sem, k = mean_sem(g[m])
            row.update({f"{m}_mean": mean, f"{m}_sem": sem})
        row["groups"] = k
        row["logistic_failures"] = int((~g["logistic_ok"].astype(bool)).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def timing_summary(df: pd.DataFrame, *, by: Sequence[str] = ("defense",)) -> pd.DataFrame:
    """Seconds per image, mean +- SEM across models (each model's per-image mean first).

    Columns used if present: ``seconds_predict`` (no certification) and
    ``seconds_certify`` (with certification).
    """
    cols = present(df, ["seconds_predict", "seconds_certify"])
    keys = present(df, by)
    rows = []
    if not cols or not keys:
        return pd.DataFrame(columns=[*keys])
    for key, g in df.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, object] = dict(zip(keys, key))
        per_model = g.groupby("model")[cols].mean() if "model" in g else g[cols].mean().to_frame().T
        for c in cols:
            mean, sem, _ = mean_sem(per_model[c])
            row.update({f"{c}_mean": mean, f"{c}_sem": sem})
        rows.append(row)
    return pd.DataFrame(rows)


def correlation_table(
    df: pd.DataFrame,
    *,
    sigmas: Sequence[float] = PAPER_SIGMAS,
    plcc_column: str = "plcc_logistic",
    digits: int = 2,
) -> pd.DataFrame:
    """FS-IQA Table 1/2 layout from per-image rows: one row per defense.

    Columns ``sigma=<s>`` hold ``"SRCC / PLCC"`` as mean ± SEM across models and
    seeds (PLCC after the logistic map by default), then ``time (no cert.)``
    and ``time (cert.)`` in seconds per image.  Sigmas without data show "–";
    sigmas present in the data but not in ``sigmas`` get their own column too.
    """
    require_columns(df, ["defense", "sigma"], "correlation table")
    summary = summarize(per_group(df))
    times = timing_summary(df)
    all_sigmas = sorted({float(s) for s in sigmas} | {float(s) for s in summary["sigma"]})
    rows = []
    for defense in sorted(summary["defense"].unique()):
        row: dict[str, str] = {"defense": str(defense)}
        for s in all_sigmas:
            hit = summary[(summary["defense"] == defense) & np.isclose(summary["sigma"], s)]
            if hit.empty:
                row[f"sigma={s:g}"] = "–"
                continue
            r = hit.iloc[0]
            row[f"sigma={s:g}"] = (
                f"{fmt_pm(r['srcc_mean'], r['srcc_sem'], digits)} / "
                f"{fmt_pm(r[f'{plcc_column}_mean'], r[f'{plcc_column}_sem'], digits)}"
            )
        t = times[times["defense"] == defense] if "defense" in times else times.iloc[0:0]
        for col, label in (("seconds_predict", "time (no cert.)"), ("seconds_certify", "time (cert.)")):
            if not t.empty and f"{col}_mean" in t:
                row[label] = _fmt_seconds(t.iloc[0][f"{col}_mean"], t.iloc[0][f"{col}_sem"])
            else:
                row[label] = "–"
        rows.append(row)
    return pd.DataFrame(rows)


def _fmt_seconds(mean: float, sem: float) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.3g} ± {sem:.2g} s" if math.isfinite(sem) else f"{mean:.3g} s"
