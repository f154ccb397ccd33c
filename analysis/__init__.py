"""Turning results into numbers and pictures.

Pure functions on arrays and DataFrames with documented columns, separate from
running models:

- :mod:`robustbench_iqa.analysis.correlation`: SRCC, KRCC, PLCC raw and after the VQEG 4-parameter
  logistic; mean ± SEM tables in the FS-IQA Tables 1-2 layout;
- :mod:`robustbench_iqa.analysis.audit`: certificate audit with Clopper-Pearson intervals and a
  distribution-free CI for the attacked median;
- :mod:`robustbench_iqa.analysis.stability`: relative deviation of repeated predictions vs n;
- :mod:`robustbench_iqa.analysis.beyond`: relative score change under attacks beyond eps_x;
- :mod:`robustbench_iqa.analysis.guarantee`: bound width vs eps_x over quantile bins;
- :mod:`robustbench_iqa.analysis.figures` (seaborn): imported on demand, since it loads
  matplotlib.

No module here imports torch (``import robustbench_iqa.analysis`` stays light); each
study's report section (:mod:`robustbench_iqa.studies`) and the HTML page
(:mod:`robustbench_iqa.report`) build on these functions.
"""

from robustbench_iqa.analysis.audit import (
    audit_table,
    classify,
    median_confidence_interval,
    verdict,
)
from robustbench_iqa.analysis.beyond import beyond_table, relative_change
from robustbench_iqa.analysis.correlation import (
    correlation_table,
    correlations,
    fit_logistic4,
    plcc_logistic,
)
from robustbench_iqa.analysis.guarantee import guarantee_table, quantile_bins
from robustbench_iqa.analysis.stability import stability_table

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
