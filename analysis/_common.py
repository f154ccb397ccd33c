"""Helpers shared by the study modules: column checks, mean +- SEM, formatting."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from robustbench_iqa.errors import InputError


def require_columns(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Raise InputError naming the columns ``df`` lacks."""
    if not isinstance(df, pd.DataFrame):
        raise InputError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InputError(f"{what}: missing column(s) {missing}; have {list(df.columns)}")


def present(df: pd.DataFrame, columns: Sequence[str]) -> list[str]:
    """The subset of ``columns`` that ``df`` has, in order (optional grouping keys)."""
    return [c for c in columns if c in df.columns]


def mean_sem(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, standard error of the mean ``s / sqrt(k)`` (``s`` with ddof=1) and k.

    NaN values are dropped; the SEM of a single value is NaN.
    """
    v = np.asarray([float(x) for x in values], dtype=float)
    v = v[np.isfinite(v)]
    k = int(v.size)
    if k == 0:
        return math.nan, math.nan, 0
    if k == 1:
        return float(v[0]), math.nan, 1
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(k)), k


def fmt_pm(mean: float, sem: float, digits: int = 2) -> str:
    """``"0.66 ± 0.02"`` (the SEM left out when it is undefined)."""
    if not math.isfinite(mean):
        return "–"
    if not math.isfinite(sem):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sem:.{digits}f}"


def as_float_array(values: object, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be numeric") from None
    return arr
