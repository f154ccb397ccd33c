"""Robustness scores against hand-computed values and statsmodels' t-interval."""

from __future__ import annotations

import math

import numpy as np
import pytest
from statsmodels.stats.weightstats import DescrStatsW

from robustbench_iqa.attacks.scores import (
    absolute_gain,
    mean_ci,
    relative_gain,
    robustness_score,
    summarize,
)
from robustbench_iqa.errors import InputError


def test_absolute_gain_normalized_and_oriented() -> None:
    clean, adv = [20.0, 50.0, 80.0], [30.0, 50.0, 60.0]
    np.testing.assert_allclose(absolute_gain(clean, adv, score_range=(0, 100)), [0.1, 0.0, -0.2])
    np.testing.assert_allclose(absolute_gain(clean, adv, score_range=(0, 100), lower_better=True),
                               [-0.1, 0.0, 0.2])
    np.testing.assert_allclose(absolute_gain([1.0], [2.0], score_range=(1, 5)), [0.25])


def test_relative_gain_and_zero_clean() -> None:
    r = relative_gain([2.0, -4.0, 0.0], [3.0, -2.0, 1.0])
    np.testing.assert_allclose(r[:2], [0.5, 0.5])
    assert math.isnan(r[2])
    np.testing.assert_allclose(relative_gain([2.0], [3.0], lower_better=True), [-0.5])


def test_robustness_score_hand_values() -> None:
    # f = 0.2 -> max(0.8, 0.2) = 0.8; |f' - f| = 0.08 -> log10(10) = 1.
    # f = 0.9 -> 0.9; change 0.009 -> log10(100) = 2.  Unchanged -> +inf.
    r = robustness_score([20.0, 90.0, 40.0], [28.0, 89.1, 40.0], score_range=(0, 100))
    np.testing.assert_allclose(r[:2], [1.0, 2.0], rtol=1e-9)
    assert math.isinf(r[2]) and r[2] > 0


def test_mean_ci_matches_statsmodels() -> None:
    v = np.array([0.3, 0.1, 0.7, 0.4, 0.9, 0.2])
    ci = mean_ci(v, confidence=0.9)
    lo, hi = DescrStatsW(v).tconfint_mean(alpha=0.1)
    assert ci.mean == pytest.approx(v.mean())
    assert (ci.low, ci.high) == pytest.approx((lo, hi), rel=1e-10)
    one = mean_ci([1.0, np.nan, np.inf])
    assert one.n == 1 and one.mean == 1.0 and math.isnan(one.low)
    assert mean_ci([]).n == 0
    with pytest.raises(InputError):
        mean_ci([1.0, 2.0], confidence=1.5)


def test_summary_excludes_unchanged_from_robustness() -> None:
    clean, adv = [20.0, 90.0, 40.0], [28.0, 89.1, 40.0]
    s = summarize(clean, adv, score_range=(0, 100))
    assert s.n_images == 3 and s.n_unchanged == 1
    assert s.robustness.mean == pytest.approx(1.5) and s.robustness.n == 2
    assert s.absolute_gain.mean == pytest.approx((0.08 - 0.009 + 0.0) / 3)
    d = s.to_dict()
    assert d["robustness_n"] == 2 and d["absolute_gain"] == pytest.approx(s.absolute_gain.mean)


def test_bad_inputs() -> None:
    with pytest.raises(InputError):
        absolute_gain([1.0, 2.0], [1.0], score_range=(0, 1))
    with pytest.raises(InputError):
        robustness_score([1.0], [np.nan], score_range=(0, 1))
    with pytest.raises(InputError):
        absolute_gain([1.0], [1.0], score_range=(1, 1))


# ------------------------------------------------------------ integral score
def test_integral_score_closed_forms() -> None:
    from scipy.integrate import trapezoid

    from robustbench_iqa.attacks.scores import integral_score

    e = np.array([0.5, 1.0, 2.0, 4.0])  # uneven budgets
    np.testing.assert_allclose(integral_score(e, np.full((2, 4), 0.3)), [0.3, 0.3])
    # A linear curve v = a e: the trapezoid rule is exact, mean height a (e_1 + e_K) / 2.
    np.testing.assert_allclose(integral_score(e, np.stack([2 * e, -e])), [2 * 2.25, -2.25])
    v = np.random.default_rng(0).normal(size=(5, 4))
    np.testing.assert_allclose(integral_score(e, v), trapezoid(v, e, axis=1) / (4.0 - 0.5))
    with pytest.raises(InputError):
        integral_score([1.0], [[1.0]])
    with pytest.raises(InputError):
        integral_score([1.0, 1.0], [[1.0, 2.0]])
    with pytest.raises(InputError):
        integral_score([1.0, 2.0], [[1.0, 2.0, 3.0]])


def test_summarize_budgets_per_budget_and_integral() -> None:
    from robustbench_iqa.attacks.scores import integral_score, summarize_budgets

    clean = np.array([20.0, 50.0, 80.0])
    budgets = [4.0, 1.0, 2.0]  # unsorted on purpose
    adv = np.stack([clean + 4.0, clean + 1.0, clean + 2.0], axis=1)  # columns follow the budgets
    s = summarize_budgets(budgets, clean, adv, score_range=(0, 100))
    assert s.budgets == (1.0, 2.0, 4.0)
    for e, per in zip(s.budgets, s.per_budget):
        ref = summarize(clean, clean + e, score_range=(0, 100))
        assert per.absolute_gain.mean == pytest.approx(ref.absolute_gain.mean)
    gains = np.array([[0.01, 0.02, 0.04]] * 3)
    assert s.integral_absolute_gain.mean == pytest.approx(float(integral_score([1.0, 2.0, 4.0], gains)[0]))
    rows = s.rows()
    assert [r["eps"] for r in rows] == [1.0, 2.0, 4.0, None] and "integral_relative_gain_low" in rows[-1]
    with pytest.raises(InputError):
        summarize_budgets([1.0, 2.0], clean, adv, score_range=(0, 100))
