"""Shape of the guarantee: bound width versus certified input radius (FS-IQA Figure 3).

Certified images of one (model, sigma) are grouped into ``bins`` (default 10)
quantile bins of ``eps_x`` with ``pandas.qcut``; per bin we report the mean
``eps_x`` and the mean width ``upper - lower``.  Tied quantile edges are merged
(``duplicates="drop"``), so a group with few distinct radii has fewer bins; a
group whose radii are all equal is one bin.  Abstained images and non-finite
radii or widths (e.g. an infinite radius) are left out.

Per-image input frame: ``model, sigma, eps_x, lower, upper`` and optionally
``abstained, defense``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from robustbench_iqa.analysis._common import present, require_columns
from robustbench_iqa.errors import InputError


def quantile_bins(values: object, bins: int = 10) -> np.ndarray:
    """0-based bin index of each value in ``bins`` quantile bins (tied edges merged)."""
    if int(bins) != bins or bins < 1:
        raise InputError(f"bins must be a positive integer, got {bins}")
    v = pd.Series(np.asarray(values, dtype=float))
    if v.isna().any():
        raise InputError("cannot bin NaN radii")
    if v.nunique() < 2:
        return np.zeros(len(v), dtype=int)
    codes = pd.qcut(v, q=int(bins), labels=False, duplicates="drop")
    # After dropping tied edges the codes can skip numbers; renumber densely.
    return pd.factorize(codes, sort=True)[0].astype(int)


def guarantee_table(
    df: pd.DataFrame, *, bins: int = 10, by: Sequence[str] = ("model", "defense", "sigma")
) -> pd.DataFrame:
    """Per group and bin: ``bin, eps_x_mean, eps_x_min, eps_x_max, width_mean, width_sem, images``."""
    require_columns(df, ["model", "sigma", "eps_x", "lower", "upper"], "guarantee study")
    data = df.copy()
    eps = data["eps_x"].astype(float)
    width = data["upper"].astype(float) - data["lower"].astype(float)
    keep = np.isfinite(eps) & np.isfinite(width)
    if "abstained" in data:
        keep &= ~data["abstained"].astype(bool)
    data = data.assign(eps_x=eps, width=width)[keep]
    keys = present(data, by)
    rows = []
    for key, g in data.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        g = g.assign(bin=quantile_bins(g["eps_x"], bins))
        for b, gb in g.groupby("bin", sort=True):
            k = len(gb)
            rows.append(
                {
                    **dict(zip(keys, key)),
                    "bin": int(b),
                    "eps_x_mean": float(gb["eps_x"].mean()),
                    "eps_x_min": float(gb["eps_x"].min()),
                    "eps_x_max": float(gb["eps_x"].max()),
                    "width_mean": float(gb["width"].mean()),
                    "width_sem": float(gb["width"].std(ddof=1) / np.sqrt(k)) if k > 1 else np.nan,
                    "images": k,
                }
            )
    cols = [*keys, "bin", "eps_x_mean", "eps_x_min", "eps_x_max", "width_mean", "width_sem", "images"]
    return pd.DataFrame(rows, columns=cols)
