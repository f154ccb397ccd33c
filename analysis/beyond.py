"""Beyond the certificate: how far do scores move under attacks larger than eps_x?

FS-IQA ("Beyond Certified Guarantees", Figure 4) attacks the undefended and the
defended model with I-FGSM (10 iterations) at L2 norms
{0.02, 0.05, 0.1, 0.15, 0.20, 0.25} and plots the relative score change

    r = (S(x_adv) - S(x)) / |S(x)|

averaged over images, per norm, with a confidence band.  The sign is kept as
measured: an attack that inflates a higher-is-better metric gives r > 0.

Confidence band of the mean per (model, defense, norm), at level ``confidence``:

* ``"t"``: Student-t interval ``mean +- t_{(1+c)/2, k-1} * sd / sqrt(k)``;
* ``"bootstrap"``: percentile bootstrap of the mean with ``n_boot`` resamples
  drawn from ``numpy.random.default_rng(seed)``.

Per-image input frame: ``model, defense, norm, image, clean, adv`` and
optionally ``sigma`` (``defense`` is ``"none"`` for the undefended model) and
``lower_better``: rows of a lower-is-better score (a distance, e.g. an FR
metric) have their change negated, so that every curve reads "relative change
of the apparent quality" and an undefended distance and its defense (which may
be trained to output a quality) are drawn on one scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from robustbench_iqa.analysis._common import present, require_columns
from robustbench_iqa.errors import InputError

PAPER_NORMS = (0.02, 0.05, 0.1, 0.15, 0.20, 0.25)
ZERO_SCORE = 1e-12


def relative_change(clean: object, adv: object) -> np.ndarray:
    """``(adv - clean) / |clean|``; NaN where ``|clean|`` is ~0."""
    c = np.asarray(clean, dtype=float)
    a = np.asarray(adv, dtype=float)
    if c.shape != a.shape:
        raise InputError(f"clean {c.shape} and adversarial {a.shape} scores differ in shape")
    denom = np.abs(c)
    ok = denom > ZERO_SCORE
    return np.where(ok, (a - c) / np.where(ok, denom, 1.0), np.nan)


def mean_ci(
    values: object,
    *,
    confidence: float = 0.95,
    method: str = "t",
    n_boot: int = 2000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Mean and its confidence interval (see module docstring); NaNs are dropped."""
    if not (0.0 < confidence < 1.0):
        raise InputError(f"confidence must lie in (0, 1), got {confidence}")
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    if v.size == 1:
        return m, math.nan, math.nan
    if method == "t":
        half = float(stats.t.ppf((1 + confidence) / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
        return m, m - half, m + half
    if method == "bootstrap":
        if n_boot < 10:
            raise InputError(f"n_boot must be >= 10, got {n_boot}")
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, v.size, size=(n_boot, v.size))
        means = v[idx].mean(axis=1)
        q = (1 - confidence) / 2
        return m, float(np.quantile(means, q)), float(np.quantile(means, 1 - q))
    raise InputError(f"unknown interval method {method!r}; choose 't' or 'bootstrap'")


def beyond_table(
    df: pd.DataFrame,
    *,
    by: Sequence[str] = ("model", "defense", "sigma", "norm"),
    confidence: float = 0.95,
    method: str = "t",
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per (model, defense, sigma, norm): ``mean, ci_low, ci_high, images`` of the relative change."""
    require_columns(df, ["model", "defense", "norm", "clean", "adv"], "beyond-the-certificate study")
    rel = relative_change(df["clean"].to_numpy(), df["adv"].to_numpy())
    if "lower_better" in df:
        rel = np.where(df["lower_better"].fillna(0).astype(bool).to_numpy(), -rel, rel)
    data = df.assign(rel_change=rel)
    keys = present(data, by)
    rows = []
    for key, g in data.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        m, lo, hi = mean_ci(g["rel_change"], confidence=confidence, method=method, n_boot=n_boot, seed=seed)
        rows.append(
            {
                **dict(zip(keys, key)),
                "mean": m,
                "ci_low": lo,
                "ci_high": hi,
                "images": int(g["rel_change"].notna().sum()),
            }
        )
    return pd.DataFrame(rows)
