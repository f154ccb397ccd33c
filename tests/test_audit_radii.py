"""The gate audits every radius a certificate claims, and says what each run could have seen."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from scipy import stats

from robustbench_iqa import InputError, create_model
from robustbench_iqa.certify.defense import DEFENSES, create_defense
from robustbench_iqa.certify.result import CertifiedScore
from robustbench_iqa.runner import run_verify
from robustbench_iqa.store import ResultsStore
from robustbench_iqa.studies import audit_probes
from robustbench_iqa.studies.audit_judgement import binomial_wording
from tests.test_verify import small


# ------------------------------------------------------------- pure pieces
def test_binomial_wording_never_says_holds_above_the_allowed_rate() -> None:
    for k, n, p0 in [(1, 8, 0.1), (3, 20, 0.1), (0, 20, 0.1), (2, 20, 0.1), (9, 20, 0.1)]:
        p = stats.binomtest(k, n, p0, alternative="greater").pvalue
        text = binomial_wording(k, n, p0, p, p <= 0.05, "premise failures")
        if k / n > p0:
            assert "holds" not in text
            assert text.startswith("FAILS" if p <= 0.05 else "above allowed, not significant")
        else:
            assert text.startswith("holds")
        assert f"p = {p:.3g}" in text


def test_shrunk_intervals_against_hand_computed_bounds() -> None:
    rows = pd.DataFrame({"score": [0.5, 0.5, 0.5], "lower": [0.4, 0.4, 0.3], "upper": [0.6, 0.7, 0.6],
                         "median_ci_low": [0.57, 0.41, 0.31], "median_ci_high": [0.575, 0.45, 0.33]})
    s = audit_probes.shrunk(rows, 0.3)
    assert s["lower"].tolist() == pytest.approx([0.43, 0.43, 0.36])
    assert s["upper"].tolist() == pytest.approx([0.57, 0.64, 0.57])
    # 0.57..0.575 pokes over 0.57 (inconclusive); 0.41..0.45 straddles 0.43; 0.31..0.33 is below 0.36.
    assert s["status"].tolist() == ["inconclusive", "inconclusive", "violation"]
    assert audit_probes.classify(rows)["status"].tolist() == ["holds", "holds", "holds"]


def _probe_rows(**over: Any) -> pd.DataFrame:
    base = {"image": "a", "lower": 0.4, "upper": 0.6, "attacked_median": 0.5, "median_ci_low": 0.49,
            "median_ci_high": 0.51, "feature_change": 0.1, "feature_radius": 0.25, "radius": 0.01,
            "recomputed_radius": 0.01}
    return audit_probes.classify(pd.DataFrame([{**base, **over}]))


def test_sound_radius_tolerates_float_error_only() -> None:
    assert audit_probes.sound_failures(_probe_rows()) == []
    assert audit_probes.sound_failures(_probe_rows(feature_change=0.25 * (1 + 1e-7))) == []
    assert "feature change" in audit_probes.sound_failures(_probe_rows(feature_change=0.25 * (1 + 1e-5)))[0]
    assert "recomputed" in audit_probes.sound_failures(_probe_rows(radius=0.0100001))[0]
    assert audit_probes.sound_failures(_probe_rows(radius=0.01 * (1 + 1e-7))) == []
    one = audit_probes.sound_failures(_probe_rows(median_ci_low=0.61, median_ci_high=0.62))
    assert one and one[0].startswith("a (attacked median")  # the image is named
    assert audit_probes.sound_failures(_probe_rows(recomputed_radius=None)) == []


def test_rescaled_points_lie_on_or_inside_the_sphere() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 8, 8, generator=g) * 0.5 + 0.25
    adv = x + 0.01 * torch.randn(3, 3, 8, 8, generator=g)
    radii = [0.05, None, 0.5]
    p = audit_probes.rescaled_points(x, adv, radii)
    norms = (p - x).reshape(3, -1).norm(dim=1)
    assert float(norms[0]) == pytest.approx(0.05, rel=1e-5)  # no clipping at this size
    assert float(norms[1]) == 0.0
    assert float(norms[2]) <= 0.5 * (1 + 1e-6) and bool(((p >= 0) & (p <= 1)).all())


def test_premise_probes_stay_below_the_certified_lipschitz_bound() -> None:
    """Independent reference: a feature change at radius r is at most L r (L certified)."""
    model = create_model("default-nr-lip")
    fs = create_defense("fs-iqa", model, sigma=0.25)
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 96, 128, generator=g)
    certs = fs.certify(x, n=500, alpha=0.99, generator=g)
    bound = fs.lipschitz_bound((96, 128))
    assert bound is not None
    radii = {"big": [c.eps_x * 2 for c in certs], "tiny": [1e-3, None]}
    out = fs.audit_premise(x, None, certs, attacked=x, steps=2, generator=g, probe_radii=radii)
    for j in range(len(certs)):
        assert out[j]["feature_change@big"] <= bound.value * radii["big"][j] * (1 + 1e-5)
        # The first-order direction doubled moves B further than the attack inside eps_x did, to first order.
        assert out[j]["feature_change@big"] > out[j]["feature_change"]
    assert 0 < out[0]["feature_change@tiny"] <= bound.value * 1e-3 * (1 + 1e-5)
    assert "feature_change@tiny" not in out[1]
    recomputed = fs.sound_radii(x, kinds=("lipschitz",))["lipschitz"]
    assert recomputed == pytest.approx([0.25 / bound.value] * 2) and recomputed[0] == pytest.approx(certs[0].eps_x_lipschitz)


@pytest.mark.parametrize(("m", "p_lo", "p_hi", "c"), [(4000, 0.1587, 0.8413, 0.9999), (50, 0.3, 0.7, 0.9),
                                                     (16000, 0.05, 0.95, 0.999)])
def test_quantile_check_indices_against_brute_force(m: int, p_lo: float, p_hi: float, c: float) -> None:
    from robustbench_iqa.certify.bounds import quantile_check_indices

    idx = quantile_check_indices(m, p_lo=p_lo, p_hi=p_hi, confidence=c)
    assert idx is not None
    j_lo, j_hi = idx
    # P(X_(j) >= q_p) = P(Bin(m, p) <= j - 1); P(X_(j) <= q_p) = P(Bin(m, p) >= j).
    ok_lo = [j for j in range(1, m + 1) if stats.binom.cdf(j - 1, m, p_lo) >= c]
    ok_hi = [j for j in range(1, m + 1) if stats.binom.sf(j - 1, m, p_hi) >= c]
    assert j_lo == min(ok_lo) and j_hi == max(ok_hi)


def test_quantile_check_coverage_by_simulation() -> None:
    """Fresh draws' inner bounds miss the true quantiles at most 1 - c of the time (c = 0.9)."""
    from robustbench_iqa.certify.bounds import quantile_check_indices

    m, c = 200, 0.9
    j_lo, j_hi = quantile_check_indices(m, p_lo=stats.norm.cdf(-1), p_hi=stats.norm.cdf(1), confidence=c)  # type: ignore[misc]
    g = torch.Generator().manual_seed(0)
    draws = torch.randn(4000, m, generator=g, dtype=torch.float64).sort(dim=1).values
    miss_lo = float((draws[:, j_lo - 1] < -1.0).double().mean())  # q_{Phi(-1)} of N(0, 1) is -1
    miss_hi = float((draws[:, j_hi - 1] > 1.0).double().mean())
    assert miss_lo <= 1 - c + 0.015 and miss_hi <= 1 - c + 0.015
    assert miss_lo >= 0.03  # and the index is not needlessly conservative


# ------------------------------------------------------------ the gate
def _planted(change: Any, *, recompute: bool = True) -> Any:
    """FS-IQA whose certificates are rewritten by ``change`` (a dict of new fields per result)."""
    def build(model: Any, *, sigma: float) -> Any:
        fs = create_defense("fs-iqa", model, sigma=sigma)
        certify = fs.certify

        def wrapped(*args: Any, **kwargs: Any) -> list[CertifiedScore]:
            return [r if r.abstained else dataclasses.replace(r, **change(r)) for r in certify(*args, **kwargs)]

        fs.certify = wrapped  # type: ignore[method-assign]
        if not recompute:
            fs.sound_radii = lambda *a, **k: {}  # type: ignore[method-assign]
        return fs

    return build


def _run(tmp_path: Path, name: str, build: Any = None, model: str = "default-nr-lip", certify_n: int = 500,
         **audit: Any) -> Any:
    cfg = small(models=[model], defenses=[name], limit=4, batch_size=4, studies=["certify", "audit"], audit=audit,
                n=certify_n)
    if build is None:
        return run_verify(cfg, tmp_path / "run", report=False, progress=False)
    with DEFENSES.override(name, build, space="feature", statistic="median"):
        return run_verify(cfg, tmp_path / "run", report=False, progress=False)


def test_honest_sound_certificate_passes_and_every_line_names_its_radius(tmp_path: Path) -> None:
    outcome = _run(tmp_path, "fs-iqa")
    assert outcome.passed, [(c.name, c.detail) for c in outcome.failures]
    checks = {c.name: c for c in outcome.checks}
    assert "Lipschitz radius (sound)" in checks["certified radius"].detail  # the default: a sound radius
    assert "first-order radius (an estimate)" in checks["certificate audit"].detail
    assert "first-order radius (an estimate)" in checks["premise"].detail
    assert checks["sound radius (lipschitz)"].passed and "no tolerance" in checks["sound radius (lipschitz)"].detail
    power = checks["detection power"].detail
    assert power.startswith("this run detects: ")
    for planted in ("first_order x1.5", "first_order x2", "interval -30%", "interval -50%", "lipschitz x2"):
        assert f"{planted} yes" in power or f"{planted} no" in power
    assert "lipschitz x2 yes" in power  # a sound radius is recomputed: an inflated claim is always seen
    assert outcome.summary[0]["radius"] == "lipschitz"
    with ResultsStore.open(tmp_path / "run") as store:
        probes = store.frame("audit_probe")
    sound = probes[probes["probe"] == "lipschitz"]
    assert len(sound) == 4 and (sound["attack_l2"] <= sound["radius"] * (1 + 1e-5)).all()
    assert (sound["radius"] <= sound["recomputed_radius"] * (1 + 1e-9)).all()


@pytest.mark.parametrize("factor", [2.0, 1000.0])
def test_inflated_sound_radius_fails_naming_the_images(tmp_path: Path, factor: float) -> None:
    build = _planted(lambda r: {"eps_x_lipschitz": r.eps_x_lipschitz * factor})
    outcome = _run(tmp_path, f"fs-lip-x{factor:g}", build)
    fails = {c.name: c for c in outcome.failures}
    assert set(fails) == {"sound radius (lipschitz)"}, [(c.name, c.detail) for c in outcome.failures]
    detail = fails["sound radius (lipschitz)"].detail
    assert "FAILS on 4" in detail and f"claimed radius {factor:.4g} x the recomputed" in detail
    with ResultsStore.open(tmp_path / "run") as store:
        images = set(store.frame("audit")["image"])
    assert all(i in detail for i in list(images)[:4])


def test_sound_radius_without_recomputation_is_caught_by_the_attacks(tmp_path: Path) -> None:
    """No recomputed radius to compare with: the feature change inside the claimed ball must show it."""
    build = _planted(lambda r: {"eps_x_lipschitz": r.eps_x * 3}, recompute=False)
    outcome = _run(tmp_path, "fs-lip-claims-3x-first-order", build)
    fails = {c.name: c for c in outcome.failures}
    assert "sound radius (lipschitz)" in fails, outcome.checks
    assert "feature change" in fails["sound radius (lipschitz)"].detail


def test_required_detection_fails_a_run_that_cannot_see_it(tmp_path: Path) -> None:
    outcome = _run(tmp_path, "fs-iqa", model="default-nr", require_detection=["interval -30%", "first_order x2"])
    power = next(c for c in outcome.checks if c.name == "detection power")
    if "interval -30% no" in power.detail:  # 4 images cannot show a 30% shrink: the gate says so and fails
        assert not power.passed and "not seen: interval -30%" in power.detail
    else:
        assert power.passed


def test_a_radius_the_certificates_do_not_claim_fails(tmp_path: Path) -> None:
    outcome = _run(tmp_path, "fs-iqa", model="default-nr-lip", radius="local")
    check = next(c for c in outcome.checks if c.name == "certified radius")
    assert not check.passed and "do not claim" in check.detail


@pytest.mark.parametrize(("audit", "message"), [
    ({"radius": "lipshitz"}, "radius must be one of"),
    ({"plant_shrink": [1.5]}, "plant_shrink"),
    ({"plant_radius": [0.5]}, "plant_radius"),
    ({"require_detection": ["interval -31%"]}, "not a planted certificate"),
])
def test_audit_config_errors(audit: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        small(audit=audit)


def test_shrunk_interval_is_reported_as_its_fraction() -> None:
    cfg = small(audit={"plant_shrink": [0.25]})
    from robustbench_iqa.studies.audit import planted_names

    assert "interval -25%" in planted_names(cfg.section("audit"))
    assert math.isclose(cfg.section("audit").plant_sound, 2.0)


# ------------------------------------------- detection power against real planted runs
def _shrink(fraction: float) -> Any:
    def change(r: CertifiedScore) -> dict[str, float]:
        return {"lower": r.score - (1 - fraction) * (r.score - r.lower),  # type: ignore[operator]
                "upper": r.score + (1 - fraction) * (r.upper - r.score)}  # type: ignore[operator]
    return change


def test_shrunk_interval_fails_on_default_nr(tmp_path: Path) -> None:
    """An interval 30% too narrow: no attack inside eps_x moves the median that far on default-nr, but
    the bounds are narrower than the quantiles the theorem names, and fresh draws at x show it."""
    outcome = _run(tmp_path, "fs-shrunk", _planted(_shrink(0.3)), model="default-nr", certify_n=2000)
    fails = {c.name: c for c in outcome.failures}
    assert "bounds recomputed" in fails, outcome.checks
    assert "4/4 bounds narrower" in fails["bounds recomputed"].detail


@pytest.mark.slow
@pytest.mark.parametrize(("planted", "change", "failing"), [
    ("interval -30%", _shrink(0.3), "certificate audit"),
    ("first_order x2", lambda r: {"eps_x": r.eps_x * 2}, "premise"),
])
def test_detection_power_predicts_the_planted_run(tmp_path: Path, planted: str, change: Any, failing: str) -> None:
    """The honest run says it sees a planted certificate; the gate run on that certificate then fails."""
    audit = {"n": 4000, "steps": 10, "eot": 8, "resample_n": 16000}
    honest = _run(tmp_path / "honest", "fs-iqa", model="default-fr", **audit)
    assert honest.passed, honest.failures
    power = next(c for c in honest.checks if c.name == "detection power").detail
    assert f"{planted} yes" in power, power
    wrong = _run(tmp_path / "planted", "fs-planted", _planted(change), model="default-fr", **audit)
    assert not wrong.passed and failing in {c.name for c in wrong.failures}, wrong.checks


def test_headline_kind_is_the_sound_radius_every_image_carries() -> None:
    from robustbench_iqa.studies.audit_judgement import headline_kind

    def rows(kinds: list[tuple[str, str, float]]) -> pd.DataFrame:
        return pd.DataFrame([{"image": i, "radius_kind": k, "radius": r, "planted": False} for i, k, r in kinds]
                            + [{"image": i, "radius_kind": "first_order", "radius": 1.0, "planted": True}
                               for i in ("a", "b")])

    assert headline_kind("auto", None) == "first_order"
    assert headline_kind("auto", None, "input radius (certified)") == "input radius (certified)"
    both = rows([("a", "lipschitz", 0.01), ("b", "lipschitz", 0.02), ("a", "local", 0.1), ("b", "local", 0.2)])
    assert headline_kind("auto", both) == "local"  # the larger sound radius
    partial = rows([("a", "lipschitz", 0.01), ("b", "lipschitz", 0.02), ("a", "local", 0.1)])
    assert headline_kind("auto", partial) == "lipschitz"  # local is missing on image b
    assert headline_kind("auto", rows([("a", "lipschitz", 0.01)])) == "first_order"
    assert headline_kind("first_order", both) == "first_order"


def test_a_required_detection_the_run_cannot_evaluate_is_not_seen(tmp_path: Path) -> None:
    outcome = _run(tmp_path, "fs-iqa", model="default-nr-lip", require_detection=["local x2"])
    power = next(c for c in outcome.checks if c.name == "detection power")
    assert not power.passed and "not seen: local x2" in power.detail
