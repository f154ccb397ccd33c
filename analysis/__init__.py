"""Turning results into numbers and pictures.

Pure functions on arrays and DataFrames with documented columns, separate from
running models:

- :mod:`analysis.correlation`: SRCC, KRCC, PLCC raw and after the VQEG 4-parameter
  logistic; mean ± SEM tables in the FS-IQA Tables 1-2 layout;
- :mod:`analysis.audit`: certificate audit with Clopper-Pearson intervals and a
  distribution-free CI for the attacked median;
- :mod:`analysis.stability`: relative deviation of repeated predictions vs n;
- :mod:`analysis.beyond`: relative score change under attacks beyond eps_x;
- :mod:`analysis.guarantee`: bound width vs eps_x over quantile bins;
- :mod:`analysis.figures` (seaborn) and :mod:`analysis.report` (CSV, Markdown,
  PNG, SVG and a self-contained HTML page) — imported on demand, since they load
  matplotlib.
"""

from analysis.audit import audit_table, classify, median_confidence_interval, verdict
from analysis.beyond import beyond_table, relative_change
from analysis.correlation import correlation_table, correlations, fit_logistic4, plcc_logistic
from analysis.guarantee import guarantee_table, quantile_bins
from analysis.stability import stability_table

__all__ = [
    "audit_table",
    "beyond_table",
    "classify",
    "correlation_table",
    "correlations",
    "fit_logistic4",
    "guarantee_table",
    "median_confidence_interval",
    "plcc_logistic",
    "quantile_bins",
    "relative_change",
    "stability_table",
    "verdict",
]
