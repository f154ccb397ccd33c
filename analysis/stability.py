"""Output stability of a randomized defense: repeated predictions of one image.

A smoothed model's prediction depends on its noise draw.  Predicting the same
image R times with different seeds gives scores ``s_1..s_R``; with their mean
``mu`` and sample standard deviation ``sd`` (ddof=1) we report, per image,

* ``rel_std = sd / |mu|``                      (relative standard deviation), and
* ``rel_max = max_r |s_r - mu| / |mu|``        (worst relative deviation),

and per (defense, model, n) their mean and maximum over images.  **The headline
number is the mean over images of ``rel_std``**, in percent (FS-IQA, "Output
stability", reports 0.06% for FS-IQA).  It shrinks like ``1/sqrt(n)`` with the
sample count n of the smoothing; ``rel_max`` is the stricter companion.  Images
whose mean score is ~0 (``|mu| <= 1e-12``) have no relative deviation and are
left out with a count.

Per-prediction input frame: ``defense, n, image, score`` and optionally
``model, sigma, seed``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from robustbench_iqa.analysis._common import present, require_columns
from robustbench_iqa.errors import InputError

REPORTED = "rel_std"
ZERO_MEAN = 1e-12


def per_image(df: pd.DataFrame, *, by: Sequence[str] = ("model", "defense", "sigma", "n")) -> pd.DataFrame:
    """Mean, std, ``rel_std``, ``rel_max`` and repeat count per image and group."""
    require_columns(df, ["defense", "n", "image", "score"], "stability study")
    keys = [*present(df, by), "image"]
    scores = df["score"].astype(float)
    if not np.all(np.isfinite(scores)):
        raise InputError("stability study: scores contain NaN or inf")
    g = df.assign(score=scores).groupby(keys, sort=True)["score"]
    out = g.agg(mean="mean", std=lambda s: s.std(ddof=1), repeats="size",
                max_dev=lambda s: float(np.max(np.abs(s - s.mean()))))
    out = out.reset_index()
    denom = out["mean"].abs()
    ok = denom > ZERO_MEAN
    out["rel_std"] = np.where(ok, out["std"] / denom.where(ok, 1.0), np.nan)
    out["rel_max"] = np.where(ok, out["max_dev"] / denom.where(ok, 1.0), np.nan)
    return out


def summarize(images: pd.DataFrame, *, by: Sequence[str] = ("model", "defense", "sigma", "n")) -> pd.DataFrame:
    """Per group: mean and max over images of ``rel_std`` and ``rel_max`` (fractions, not %)."""
    keys = present(images, by)
    rows = []
    for key, g in images.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        valid = g.dropna(subset=["rel_std"])
        rows.append(
            {
                **dict(zip(keys, key)),
                "images": int(len(valid)),
                "zero_mean_images": int(len(g) - len(valid)),
                "repeats": int(g["repeats"].min()),
                "rel_std_mean": float(valid["rel_std"].mean()) if len(valid) else np.nan,
                "rel_std_max": float(valid["rel_std"].max()) if len(valid) else np.nan,
                "rel_max_mean": float(valid["rel_max"].mean()) if len(valid) else np.nan,
                "rel_max_max": float(valid["rel_max"].max()) if len(valid) else np.nan,
            }
        )
    return pd.DataFrame(rows)


def stability_table(df: pd.DataFrame) -> pd.DataFrame:
    """Summary of per-prediction rows, with the reported deviation in percent."""
    out = summarize(per_image(df))
    out["deviation_percent"] = 100.0 * out[f"{REPORTED}_mean"]
    return out
