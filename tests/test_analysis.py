"""The studies against independent references: closed forms, brute force, scipy, Monte Carlo."""

from __future__ import annotations

import itertools
import math

import matplotlib
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from robustbench_iqa.analysis import audit, beyond, correlation, guarantee, stability
from robustbench_iqa.analysis._common import mean_sem
from robustbench_iqa.errors import InputError

# --------------------------------------------------------------------------- correlation


def _brute_kendall(x: np.ndarray, y: np.ndarray) -> float:
    s = sum(np.sign(x[i] - x[j]) * np.sign(y[i] - y[j]) for i, j in itertools.combinations(range(len(x)), 2))
    return float(s / (len(x) * (len(x) - 1) / 2))


def test_rank_and_linear_correlations_match_closed_forms() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    y = x + rng.normal(scale=0.7, size=40)  # continuous: no ties
    d = stats.rankdata(x) - stats.rankdata(y)
    n = len(x)
    assert correlation.srcc(x, y) == pytest.approx(1 - 6 * np.sum(d**2) / (n * (n**2 - 1)), abs=1e-12)
    assert correlation.plcc(x, y) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert correlation.krcc(x, y) == pytest.approx(_brute_kendall(x, y), abs=1e-12)
    # NaN pairs are dropped, constant inputs give NaN rather than a crash.
    assert correlation.srcc(np.r_[x, np.nan], np.r_[y, 1.0]) == pytest.approx(correlation.srcc(x, y))
    assert math.isnan(correlation.plcc(np.ones(10), np.arange(10)))
    with pytest.raises(InputError, match="length"):
        correlation.srcc(x, y[:-1])


def test_logistic_fit_recovers_known_parameters() -> None:
    rng = np.random.default_rng(2)
    true = (4.5, 1.0, 0.6, 0.12)
    x = rng.uniform(0, 1.2, size=300)
    y = correlation.logistic4(x, *true) + rng.normal(scale=0.05, size=x.size)
    fit = correlation.fit_logistic4(x, y)
    assert fit.ok and fit.params is not None
    b1, b2, b3, b4 = fit.params
    assert (b1, b2, b3, abs(b4)) == pytest.approx(true, rel=0.05)
    pl, ok = correlation.plcc_logistic(x, y)
    assert ok
    assert pl == pytest.approx(np.corrcoef(correlation.logistic4(x, *true), y)[0, 1], abs=2e-3)
    assert pl > correlation.plcc(x, y) + 0.01  # the nonlinearity costs raw PLCC


def test_logistic_fit_handles_decreasing_relations_and_failures() -> None:
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, size=200)
    y = correlation.logistic4(-x, 5.0, 1.0, -0.5, 0.1) + rng.normal(scale=0.05, size=x.size)
    pl, ok = correlation.plcc_logistic(x, y)
    assert ok and pl > 0.95  # the fitted map is decreasing, so PLCC after it is positive
    fit = correlation.fit_logistic4(np.ones(20), np.arange(20.0))
    assert not fit.ok and "constant" in fit.message
    pl, ok = correlation.plcc_logistic([1, 2, 3, 4], [1, 3, 2, 4])
    assert not ok and pl == pytest.approx(np.corrcoef([1, 2, 3, 4], [1, 3, 2, 4])[0, 1])


def test_mean_sem_matches_scipy() -> None:
    v = [0.61, 0.66, 0.71, 0.58]
    m, s, k = mean_sem(v)
    assert (m, s, k) == (pytest.approx(np.mean(v)), pytest.approx(stats.sem(v)), 4)
    assert math.isnan(mean_sem([0.3])[1]) and mean_sem([])[2] == 0


def _correlation_rows() -> pd.DataFrame:
    rng = np.random.default_rng(4)
    rows = []
    for model, defense, sigma, seed in itertools.product(("a", "b", "c"), ("fs-iqa", "ms"), (0.1, 0.25), (0, 1)):
        t = rng.uniform(1, 5, size=25)
        noise = 0.3 if defense == "fs-iqa" else 1.5
        s = t + rng.normal(scale=noise * (1 + sigma), size=t.size)
        for i in range(t.size):
            rows.append({"model": model, "defense": defense, "sigma": sigma, "seed": seed, "image": f"i{i}",
                         "score": s[i], "target": t[i], "seconds_predict": 0.01 if defense == "fs-iqa" else 2.0,
                         "seconds_certify": {"a": 1.0, "b": 2.0, "c": 3.0}[model]})
    return pd.DataFrame(rows)


def test_correlation_table_layout_and_values() -> None:
    df = _correlation_rows()
    table = correlation.correlation_table(df)
    assert list(table.columns) == ["defense", "sigma=0.1", "sigma=0.25", "sigma=0.5",
                                   "time (no cert.)", "time (cert.)"]
    assert list(table["defense"]) == ["fs-iqa", "ms"]
    assert (table["sigma=0.5"] == "–").all()  # no data at sigma 0.5
    # Independent recomputation of one cell: SRCC per (model, seed), then mean +- SEM.
    g = df[(df["defense"] == "ms") & (df["sigma"] == 0.25)]
    per = [stats.spearmanr(h["score"], h["target"])[0] for _, h in g.groupby(["model", "seed"])]
    cell = table.loc[table["defense"] == "ms", "sigma=0.25"].iloc[0]
    assert cell.startswith(f"{np.mean(per):.2f} ± {stats.sem(per):.2f} / ")
    # Certification time: per-model means 1, 2, 3 -> mean 2, SEM 1/sqrt(3).
    assert table.loc[0, "time (cert.)"] == f"{2.0:.3g} ± {stats.sem([1, 2, 3]):.2g} s"
    groups = correlation.per_group(df)
    assert len(groups) == 3 * 2 * 2 * 2 and groups["logistic_ok"].all()


# --------------------------------------------------------------------------- audit: statistics


def _brute_median_ci_lower(n: int, c: float) -> int:
    """Largest l with P(K <= l - 1) <= (1 - c)/2, K ~ Bin(n, 1/2), in exact integer arithmetic."""
    best, tail = 0, 0
    for lo in range(1, n + 1):
        tail += math.comb(n, lo - 1)  # sum_{k < lo} C(n, k)
        if tail / 2**n > (1 - c) / 2:
            break
        best = lo
    return best


@pytest.mark.parametrize(("n", "c"), [(15, 0.9999), (20, 0.95), (51, 0.9), (100, 0.99), (1001, 0.999)])
def test_median_ci_indices_match_brute_force(n: int, c: float) -> None:
    lo, hi = audit.median_ci_indices(n, c)
    assert lo == _brute_median_ci_lower(n, c)
    assert hi == n + 1 - lo
    assert audit.median_ci_coverage(n, lo, hi) >= c
    if lo + 1 <= hi - 1:  # maximality: the next narrower interval undercovers
        assert audit.median_ci_coverage(n, lo + 1, hi - 1) < c


def test_median_ci_needs_enough_samples() -> None:
    with pytest.raises(InputError, match="need >= 15"):
        audit.median_ci_indices(14, 0.9999)
    with pytest.raises(InputError, match="sorted"):
        audit.median_confidence_interval([3.0, 1.0, 2.0] * 10, 0.9)
    with pytest.raises(InputError, match="NaN"):
        audit.median_confidence_interval([np.nan] * 30, 0.9)


def test_median_ci_coverage_by_monte_carlo() -> None:
    rng = np.random.default_rng(5)
    n, c, trials = 51, 0.9, 4000
    samples = np.sort(rng.exponential(size=(trials, n)), axis=1)  # skewed; median = ln 2
    lo, hi = audit.median_confidence_interval(samples, c)
    covered = np.mean((lo <= math.log(2)) & (math.log(2) <= hi))
    exact = audit.median_ci_coverage(n, *audit.median_ci_indices(n, c))
    assert covered == pytest.approx(exact, abs=4 * math.sqrt(exact * (1 - exact) / trials))
    assert exact >= c


@pytest.mark.parametrize(("k", "n"), [(0, 30), (3, 30), (30, 30), (7, 1000)])
def test_clopper_pearson_matches_beta_quantiles(k: int, n: int) -> None:
    lo, hi = audit.clopper_pearson(k, n, 0.95)
    ref_lo = 0.0 if k == 0 else stats.beta.ppf(0.025, k, n - k + 1)
    ref_hi = 1.0 if k == n else stats.beta.ppf(0.975, k + 1, n - k)
    assert (lo, hi) == (pytest.approx(ref_lo, abs=1e-10), pytest.approx(ref_hi, abs=1e-10))


def test_verdict_fails_only_when_significantly_above_nominal() -> None:
    # Smallest k out of 200 whose CP lower bound exceeds 1 - alpha = 0.01.
    k_fail = next(k for k in range(201) if stats.beta.ppf(0.025, k, 201 - k) > 0.01)
    below = audit.verdict(k_fail - 1, 200, alpha=0.99)
    assert below.passed and "holds" not in below.message and "not significantly above" in below.message
    assert "certificate holds" in audit.verdict(2, 200, alpha=0.99).message  # rate 0.01 = nominal
    v = audit.verdict(k_fail, 200, alpha=0.99)
    assert not v.passed and "FAILS" in v.message and v.nominal == pytest.approx(0.01)
    assert audit.verdict(0, 0, alpha=0.99).passed


# --------------------------------------------------------------------------- audit: synthetic certificates


def _audit_records(bounds: str, *, seed: int = 6, images: int = 60, n_audit: int = 2000) -> pd.DataFrame:
    """True attacked medians m_i; n_audit noisy samples at each; bounds built around m_i."""
    rng = np.random.default_rng(seed)
    m = rng.uniform(0.3, 0.7, size=images)
    samples = m[:, None] + rng.normal(scale=0.05, size=(images, n_audit))
    summary = audit.attacked_point_summary(samples)
    half = {"correct": (-0.1, 0.1), "broken": (0.03, 0.1), "tight": (-1e-4, 1e-4)}[bounds]
    return summary.assign(
        model="toy", defense="fs-iqa", sigma=0.25, alpha=0.999,
        lower=m + half[0], upper=m + half[1], abstained=False,
        feature_change=0.1, feature_radius=0.25,
    )


def test_audit_passes_a_correct_certificate_and_flags_a_broken_one() -> None:
    good = audit.audit_table(_audit_records("correct"))
    viol = good[good["kind"] == "violation"].iloc[0]
    assert viol["count"] == 0 and viol["passed"]
    bad = audit.audit_table(_audit_records("broken"))  # bounds too narrow: they exclude the median
    viol = bad[bad["kind"] == "violation"].iloc[0]
    assert viol["count"] == 60 and not viol["passed"]
    assert viol["ci_low"] > viol["nominal"] == pytest.approx(0.001)


def test_sampling_error_is_inconclusive_not_a_violation() -> None:
    recs = _audit_records("tight")  # bounds hug the true median: the estimate falls outside half the time
    point_outside = (recs["attacked_median"] < recs["lower"]) | (recs["attacked_median"] > recs["upper"])
    assert point_outside.mean() > 0.5  # a naive point-estimate audit would cry violation
    status = audit.classify(recs)["status"]
    assert (status == "inconclusive").all()
    assert audit.audit_table(recs).query("kind == 'violation'")["passed"].all()


def test_audit_counts_abstentions_and_premise_failures_with_their_denominators() -> None:
    recs = _audit_records("correct", images=20)
    recs.loc[:4, "abstained"] = True
    recs.loc[:4, ["lower", "upper"]] = np.nan
    recs.loc[10:12, "feature_change"] = 0.3  # > feature_radius 0.25: IVE premise failed
    t = audit.audit_table(recs).set_index("kind")
    assert (t.loc["abstained", "count"], t.loc["abstained", "total"]) == (5, 20)
    assert (t.loc["premise_failed", "count"], t.loc["premise_failed", "total"]) == (3, 15)
    assert t.loc["violation", "total"] == 15
    assert math.isnan(t.loc["abstained", "nominal"])
    with pytest.raises(InputError, match="alpha"):
        audit.audit_table(recs.drop(columns="alpha"))
    with pytest.raises(InputError, match="missing column"):
        audit.classify(recs.drop(columns="median_ci_low"))


# --------------------------------------------------------------------------- stability, beyond, guarantee


def test_stability_by_hand() -> None:
    rows = [("a", s) for s in (1.0, 1.1, 0.9)] + [("b", s) for s in (2.0, 2.0, 2.6)] + [("z", s) for s in (-1, 0, 1)]
    df = pd.DataFrame([{"defense": "fs-iqa", "n": 100, "image": i, "score": s} for i, s in rows])
    img = stability.per_image(df).set_index("image")
    assert img.loc["a", "rel_std"] == pytest.approx(0.1)
    assert img.loc["a", "rel_max"] == pytest.approx(0.1)
    assert img.loc["b", "rel_std"] == pytest.approx(np.std([2, 2, 2.6], ddof=1) / 2.2)
    assert img.loc["b", "rel_max"] == pytest.approx(0.4 / 2.2)
    assert math.isnan(img.loc["z", "rel_std"])  # mean 0: no relative deviation
    t = stability.stability_table(df).iloc[0]
    assert t["images"] == 2 and t["zero_mean_images"] == 1
    assert t["deviation_percent"] == pytest.approx(100 * (0.1 + np.std([2, 2, 2.6], ddof=1) / 2.2) / 2)


def test_beyond_relative_change_and_intervals() -> None:
    assert beyond.relative_change([0.5, -2.0, 0.0], [0.6, -1.0, 1.0]).tolist()[:2] == pytest.approx([0.2, 0.5])
    assert math.isnan(beyond.relative_change([0.0], [1.0])[0])
    v = np.array([0.1, 0.3, 0.2, 0.5, 0.4])
    m, lo, hi = beyond.mean_ci(v, method="t")
    ref = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
    assert (m, lo, hi) == (pytest.approx(0.3), pytest.approx(ref[0]), pytest.approx(ref[1]))
    w = np.random.default_rng(7).normal(0.3, 0.1, size=200)
    b1 = beyond.mean_ci(w, method="bootstrap", seed=1)
    assert b1 == beyond.mean_ci(w, method="bootstrap", seed=1)  # seeded: reproducible
    assert b1 != beyond.mean_ci(w, method="bootstrap", seed=2)
    t1 = beyond.mean_ci(w, method="t")
    assert b1[1] == pytest.approx(t1[1], abs=0.004) and b1[2] == pytest.approx(t1[2], abs=0.004)
    with pytest.raises(InputError, match="method"):
        beyond.mean_ci(v, method="magic")


def test_beyond_table_groups_by_norm_and_defense() -> None:
    rows = []
    for defense, gain in (("none", 2.0), ("fs-iqa", -0.5)):
        for norm in beyond.PAPER_NORMS:
            for i in range(8):
                rows.append({"model": "m", "defense": defense, "norm": norm, "image": f"i{i}",
                             "clean": 0.5, "adv": 0.5 * (1 + gain * norm + 0.01 * (i - 3.5))})
    t = beyond.beyond_table(pd.DataFrame(rows))
    assert len(t) == 12
    row = t[(t["defense"] == "none") & (t["norm"] == 0.1)].iloc[0]
    assert row["mean"] == pytest.approx(0.2) and row["ci_low"] < 0.2 < row["ci_high"]


def test_quantile_bins_and_guarantee_table() -> None:
    eps = np.arange(1, 101) / 100.0
    bins = guarantee.quantile_bins(eps, 10)
    assert np.bincount(bins).tolist() == [10] * 10
    assert bins.tolist() == (np.searchsorted(np.quantile(eps, np.linspace(0, 1, 11))[1:-1], eps, side="left")).tolist()
    tied = np.r_[np.zeros(60), np.arange(1, 41)]
    tb = guarantee.quantile_bins(tied, 10)
    assert tb.max() + 1 < 10 and (tb[:60] == 0).all()  # tied edges merged, no error
    assert guarantee.quantile_bins(np.full(7, 0.3), 10).tolist() == [0] * 7
    df = pd.DataFrame({"model": "m", "sigma": 0.25, "eps_x": eps, "lower": 0.0, "upper": 2 * eps,
                       "abstained": False})
    df.loc[0, "abstained"] = True
    t = guarantee.guarantee_table(df, bins=5)
    assert t["images"].sum() == 99
    kept = eps[1:]
    first = kept[kept <= np.quantile(kept, 0.2)]  # bin 0: right-closed at the 20% quantile
    assert t.loc[0, "width_mean"] == pytest.approx(2 * first.mean())
    assert t.loc[0, "eps_x_mean"] == pytest.approx(first.mean())


# --------------------------------------------------------------------------- figures


def test_figures_write_png_and_svg_without_global_side_effects(tmp_path: pytest.TempPathFactory) -> None:
    from xml.etree import ElementTree

    from robustbench_iqa.analysis import figures

    before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    corr = correlation.summarize(correlation.per_group(_correlation_rows()))
    recs = pd.concat([_audit_records("correct", images=15), _audit_records("broken", images=15).assign(sigma=0.5)])
    figs = {
        "corr": figures.correlation_figure(corr),
        "audit": figures.audit_figure(audit.audit_table(recs)),
    }
    for name, fig in figs.items():
        paths = figures.save_figure(fig, tmp_path / name)  # type: ignore[operator]
        assert [p.suffix for p in paths] == [".png", ".svg"]
        assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert ElementTree.parse(paths[1]).getroot().tag.endswith("svg")
    assert dict(matplotlib.rcParams) == before and matplotlib.get_backend() == backend


def test_lower_better_rows_are_correlated_as_negated_scores() -> None:
    from scipy import stats as st

    from robustbench_iqa.analysis.correlation import per_group

    rng = np.random.default_rng(3)
    y = rng.uniform(1, 5, 40)
    dist = -y + rng.normal(0, 0.5, 40)  # a distance: lower = better
    df = pd.DataFrame({"model": "d", "defense": "none", "sigma": 0.0, "image": [f"i{i}" for i in range(40)],
                       "score": dist, "target": y, "lower_better": True})
    g = per_group(df)
    assert g["srcc"].iloc[0] == pytest.approx(st.spearmanr(-dist, y).statistic, abs=1e-12)
    assert g["srcc"].iloc[0] > 0.8
    g2 = per_group(df.drop(columns="lower_better"))
    assert g2["srcc"].iloc[0] == pytest.approx(-g["srcc"].iloc[0], abs=1e-12)


def test_beyond_orients_lower_better_rows_as_quality() -> None:
    df = pd.DataFrame({"model": "m", "defense": ["none", "none", "fs", "fs"], "norm": 0.1,
                       "image": ["a", "b", "a", "b"], "clean": [0.5, 0.4, 0.5, 0.4], "adv": [0.4, 0.3, 0.6, 0.5],
                       "lower_better": [True, True, False, False]})
    t = beyond.beyond_table(df).set_index("defense")
    # A distance lowered by 20% and 25% is a quality raised by those amounts, like the defended score.
    assert t.loc["none", "mean"] == pytest.approx((0.2 + 0.25) / 2)
    assert t.loc["fs", "mean"] == pytest.approx((0.2 + 0.25) / 2)


def test_premise_failure_uses_the_gates_tolerance() -> None:
    import pandas as pd

    from robustbench_iqa.analysis.audit import audit_table, classify

    rows = pd.DataFrame({"model": "m", "defense": "fs-iqa", "sigma": 0.25, "lower": 0.0, "upper": 1.0,
                         "abstained": False, "median_ci_low": 0.4, "median_ci_high": 0.6, "alpha": 0.999,
                         "feature_radius": 0.25, "feature_change": [0.25 * 1.05, 0.25 * 1.2, 0.2]})
    assert classify(rows)["premise_failed"].tolist() == [True, True, False]
    assert classify(rows, premise_tolerance=0.1)["premise_failed"].tolist() == [False, True, False]
    table = audit_table(rows, premise_tolerance=0.1)
    assert int(table.loc[table["kind"] == "premise_failed", "count"].iloc[0]) == 1


def test_a_defense_without_a_premise_has_no_premise_rate() -> None:
    import math

    import pandas as pd

    from robustbench_iqa.analysis.audit import audit_table

    rows = pd.DataFrame({"model": "m", "defense": "ms", "sigma": 0.25, "lower": 0.0, "upper": 1.0,
                         "abstained": False, "median_ci_low": 0.4, "median_ci_high": 0.6, "alpha": 0.999,
                         "feature_radius": float("nan"), "feature_change": [float("nan")] * 3})
    premise = audit_table(rows).set_index("kind").loc["premise_failed"]
    assert int(premise["total"]) == 0 and math.isnan(float(premise["rate"]))
