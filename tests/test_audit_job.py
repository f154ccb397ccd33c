"""The audit's estimate at an attacked point: its confidence intervals cover the true statistic."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from scipy import stats

from robustbench_iqa.certify.result import Guarantee
from robustbench_iqa.runner import VerifyConfig, run_verify
from robustbench_iqa.runner.audit_job import estimate_at


class _GaussianDefense:
    """noisy_scores draws N(mu, s^2), clipped to [0, 1]: its median and mean are known."""

    sigma = 0.25
    score_range = (0.0, 1.0)
    output_range = (0.0, 1.0)

    def __init__(self, mu: float, s: float) -> None:
        self.mu, self.s = mu, s

    def noisy_scores(self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        e = torch.randn((x.shape[0], n), generator=generator, dtype=torch.float64)
        return (self.mu + self.s * e).clamp(0.0, 1.0)


@pytest.mark.parametrize("guarantee", [Guarantee.PERCENTILE_BOUNDS, Guarantee.MEAN_BOUNDS])
def test_estimate_interval_covers_the_true_statistic(guarantee: Guarantee) -> None:
    d = _GaussianDefense(0.4, 0.1)  # clipping is negligible (4 sd), so median = mean = 0.4
    x = torch.zeros(1, 3, 4, 4)
    conf, trials, n = 0.9, 400, 201
    misses = 0
    for t in range(trials):
        est = estimate_at(d, x, None, n=n, guarantee=guarantee, gen=torch.Generator().manual_seed(t),  # type: ignore[arg-type]
                          confidence=conf)
        assert est["median_ci_low"] <= est["attacked_median"] <= est["median_ci_high"]
        misses += not (est["median_ci_low"] <= 0.4 <= est["median_ci_high"])
    # Misses stay within the nominal 10%, up to a one-sided binomial 0.999 tolerance.
    assert misses <= stats.binom.ppf(0.999, trials, 1 - conf)
    if guarantee is Guarantee.MEAN_BOUNDS:  # Hoeffding on [0, 1], closed form
        half = (est["median_ci_high"] - est["median_ci_low"]) / 2
        assert half == pytest.approx(math.sqrt(math.log(2 / (1 - conf)) / (2 * n)), rel=1e-12)


@pytest.mark.slow
def test_verify_audits_all_six_defenses(tmp_path: Path) -> None:
    cfg = VerifyConfig(models=("default-nr",), defenses=("fs-iqa", "ms", "dms", "dms-iqa", "rs-reg", "cert-reg"),
                       limit=2, n=300, audit_n=300, alpha=0.99, attack_steps=2, eot=2, stability_repeats=2,
                       stability_limit=1, stability_n=(300,), beyond_limit=1, beyond_norms=(0.25,))
    outcome = run_verify(cfg, tmp_path / "run", report=False, progress=False)
    assert outcome.passed, outcome.failures
    audited = {c.defense for c in outcome.checks if c.name == "certificate audit"}
    assert audited == set(cfg.defenses)
