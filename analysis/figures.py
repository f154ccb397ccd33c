"""Seaborn figures of the studies, saved as PNG and SVG.

Every function takes the table its study module returns and gives back a
``matplotlib.figure.Figure`` built without pyplot (so no GUI backend is
selected and no global state changes; rendering goes through Agg).  The
seaborn style is applied only inside each function (``sns.axes_style`` as a
context manager), never at import time.  :func:`save_figure` writes both
formats.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

FORMATS = ("png", "svg")


@contextmanager
def _style() -> Iterator[None]:
    with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.1):
        yield


def _panels(n: int, *, width: float = 4.2, height: float = 3.4) -> tuple[Figure, list[Axes]]:
    cols = max(1, min(n, 3))
    rows = max(1, math.ceil(n / cols))
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _label(row: pd.Series, keys: Sequence[str]) -> str:
    parts = []
    for k in keys:
        v = row[k]
        parts.append(f"σ={v:g}" if k == "sigma" else str(v))
    return " / ".join(parts)


def save_figure(fig: Figure, stem: str | Path, *, dpi: int = 150) -> list[Path]:
    """Write ``stem.png`` and ``stem.svg``; returns the paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        p = stem.with_name(f"{stem.name}.{fmt}")
        fig.savefig(p, format=fmt, dpi=dpi)
        paths.append(p)
    return paths


def beyond_figure(table: pd.DataFrame) -> Figure:
    """Relative score change (%) vs attack L2 norm, one panel per model, bands = CI (Figure 4 style)."""
    models = sorted(table["model"].unique())
    hue_keys = [k for k in ("defense", "sigma") if k in table]
    with _style():
        fig, axes = _panels(len(models))
        data = table.assign(
            label=[_label(r, hue_keys) for _, r in table.iterrows()],
            mean_pct=100 * table["mean"], lo_pct=100 * table["ci_low"], hi_pct=100 * table["ci_high"],
        )
        labels = sorted(data["label"].unique())
        palette = dict(zip(labels, sns.color_palette("deep", len(labels))))
        for ax, model in zip(axes, models):
            d = data[data["model"] == model].sort_values("norm")
            sns.lineplot(data=d, x="norm", y="mean_pct", hue="label", hue_order=labels, palette=palette,
                         marker="o", errorbar=None, ax=ax)
            for lab, g in d.groupby("label"):
                ax.fill_between(g["norm"], g["lo_pct"], g["hi_pct"], color=palette[lab], alpha=0.2, lw=0)
            ax.axhline(0, color="0.3", lw=0.8)
            ax.set(title=str(model), xlabel="attack L2 norm", ylabel="relative quality change (%)")
            ax.legend(title=None, fontsize="small")
    return fig


def guarantee_figure(table: pd.DataFrame) -> Figure:
    """Mean bound width vs eps_x over quantile bins, lines per model, one panel per sigma (Figure 3)."""
    sigmas = sorted(table["sigma"].unique())
    with _style():
        fig, axes = _panels(len(sigmas))
        keys = ["model"] if "defense" not in table or table["defense"].nunique() == 1 else ["model", "defense"]
        data = table.assign(label=[_label(r, keys) for _, r in table.iterrows()])
        labels = sorted(data["label"].unique())
        palette = dict(zip(labels, sns.color_palette("deep", len(labels))))
        for ax, s in zip(axes, sigmas):
            d = data[data["sigma"] == s].sort_values("eps_x_mean")
            sns.lineplot(data=d, x="eps_x_mean", y="width_mean", hue="label", hue_order=labels,
                         palette=palette, marker="o", errorbar=None, sort=False, ax=ax)
            ax.set(title=f"σ = {s:g}", xlabel="certified radius $\\epsilon_x$ (bin mean)",
                   ylabel="mean $S^u - S^l$")
            radii = d["eps_x_mean"][d["eps_x_mean"] > 0]
            if len(radii) and radii.max() > 100 * radii.min():  # radii of several kinds: orders apart
                ax.set_xscale("log")
            ax.legend(title=None, fontsize="small")
    return fig


def stability_figure(summary: pd.DataFrame) -> Figure:
    """Relative deviation (%) of repeated predictions vs sample count n, per defense/model."""
    keys = [k for k in ("model", "defense", "sigma") if k in summary]
    with _style():
        fig, (ax,) = _panels(1, width=5.5, height=3.8)
        d = summary.assign(label=[_label(r, keys) for _, r in summary.iterrows()],
                           dev_pct=100 * summary["rel_std_mean"], max_pct=100 * summary["rel_max_mean"])
        sns.lineplot(data=d.sort_values("n"), x="n", y="dev_pct", hue="label", marker="o", errorbar=None, ax=ax)
        ax.set_xscale("log")
        ax.set(xlabel="samples n", ylabel="mean relative std (%)", title="output stability")
        ax.legend(title=None, fontsize="small")
    return fig


def _grouped_bars(ax: Axes, values: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                  xticks: Sequence[str], series: Sequence[str]) -> None:
    """Bars ``values[i_series, j_x]`` with asymmetric error bars, in a seaborn palette."""
    k = len(series)
    width = 0.8 / max(k, 1)
    colors = sns.color_palette("deep", k)
    x = np.arange(len(xticks))
    for i, name in enumerate(series):
        pos = x - 0.4 + width * (i + 0.5)
        v = values[i]
        err = np.vstack([np.clip(v - lower[i], 0, None), np.clip(upper[i] - v, 0, None)])
        err = np.nan_to_num(err)
        ax.bar(pos, np.nan_to_num(v), width=width, color=colors[i], label=name)
        ax.errorbar(pos, np.nan_to_num(v), yerr=err, fmt="none", ecolor="0.2", capsize=3, lw=1)
    ax.set_xticks(x, list(xticks))


def audit_figure(table: pd.DataFrame) -> Figure:
    """Audit rates with Clopper-Pearson error bars and the nominal error 1 - alpha as a line."""
    keys = [k for k in ("model", "defense", "sigma") if k in table]
    kinds = [k for k in ("violation", "inconclusive", "premise_failed", "abstained") if k in set(table["kind"])]
    with _style():
        fig, (ax,) = _panels(1, width=6.5, height=3.8)
        d = table.assign(label=[_label(r, keys) for _, r in table.iterrows()])
        series = sorted(d["label"].unique())
        shape = (len(series), len(kinds))
        vals, lo, hi = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
        for i, s in enumerate(series):
            for j, kind in enumerate(kinds):
                hit = d[(d["label"] == s) & (d["kind"] == kind)]
                if not hit.empty:
                    vals[i, j], lo[i, j], hi[i, j] = hit.iloc[0][["rate", "ci_low", "ci_high"]]
        _grouped_bars(ax, vals, lo, hi, [k.replace("_", " ") for k in kinds], series)
        nominal = sorted(d.loc[d["kind"] == "violation", "nominal"].dropna().unique())
        for j, nom in enumerate(nominal):
            ax.axhline(nom, color="crimson", ls="--", lw=1, label="nominal error 1-α" if j == 0 else None)
        # Nominal errors are tiny (1e-3) next to abstention rates: linear near 0, log above.
        positive = [v for v in nominal if v > 0]
        ax.set_yscale("symlog", linthresh=min(positive) if positive else 1e-3)
        ax.set_ylim(0, 1.05)
        ax.set(ylabel="rate (Clopper-Pearson CI)", title="certificate audit")
        ax.legend(fontsize="small")
    return fig


def correlation_figure(summary: pd.DataFrame, *, plcc_column: str = "plcc_logistic") -> Figure:
    """SRCC and PLCC (mean ± SEM across models/seeds) per defense, one panel per metric."""
    metrics = [("srcc", "SRCC"), (plcc_column, "PLCC")]
    with _style():
        fig, axes = _panels(len(metrics))
        defenses = sorted(summary["defense"].unique())
        sigmas = sorted(summary["sigma"].unique()) if "sigma" in summary else [None]
        series = [f"σ={s:g}" if s is not None else "all" for s in sigmas]
        for ax, (col, title) in zip(axes, metrics):
            shape = (len(sigmas), len(defenses))
            vals, sem = np.full(shape, np.nan), np.full(shape, np.nan)
            for i, s in enumerate(sigmas):
                for j, dfn in enumerate(defenses):
                    hit = summary[(summary["defense"] == dfn) & ((summary["sigma"] == s) if s is not None else True)]
                    if not hit.empty:
                        vals[i, j], sem[i, j] = hit.iloc[0][[f"{col}_mean", f"{col}_sem"]]
            sem = np.nan_to_num(sem)
            _grouped_bars(ax, vals, vals - sem, vals + sem, defenses, series)
            ax.set(title=title, ylabel=f"{title} (mean ± SEM)")
            ax.legend(fontsize="small")
    return fig
