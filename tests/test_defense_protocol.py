"""Every defense owns its capabilities: estimate intervals that cover, settings it declares, the protocol."""

from __future__ import annotations

import dataclasses
import inspect
import math
from pathlib import Path

import pytest
import torch
from scipy import stats
from statsmodels.stats.multitest import multipletests

from robustbench_iqa.analysis.audit import binomial_upper_pvalue, holm
from robustbench_iqa.certify.defense import (
    DEFENSES,
    CertifiedDefense,
    create_defense,
    settings_from,
)
from robustbench_iqa.models import create_model
from tests.toy_models import ToyNR

CERTIFIED = tuple(DEFENSES.names(certified=True))
"""Every certified defense the registry knows (the suite ships six)."""


@pytest.fixture(scope="module")
def defenses() -> dict[str, CertifiedDefense]:
    model = create_model("default-nr")
    return {name: create_defense(name, model, sigma=0.25) for name in CERTIFIED}


def test_every_defense_meets_the_protocol(defenses: dict[str, CertifiedDefense]) -> None:
    for name, d in defenses.items():
        assert isinstance(d, CertifiedDefense), name
        assert callable(d.eot_aggregate) or d.eot_aggregate in ("mean", "soft-median"), name
        assert str(d.statistic) == DEFENSES.metadata(name)["statistic"], name
        # The settings dataclass names exactly the extra keyword-only arguments of certify.
        params = inspect.signature(d.certify).parameters
        extra = {p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY} - {"n", "alpha", "generator"}
        assert {f.name for f in dataclasses.fields(d.certify_settings)} == extra, name
        ident = d.identity()
        assert ident["defense"] == name and ident["sigma"] == 0.25
        trained = DEFENSES.metadata(name)["trained"]
        assert (ident["artifact_sha256"] is not None) is trained, name


def test_settings_from_gives_each_defense_only_its_own(defenses: dict[str, CertifiedDefense]) -> None:
    source = {"tau": 0.01, "eps": 0.1, "alpha": 0.9, "rtol": None}
    assert settings_from(defenses["fs-iqa"], source) == {"tau": 0.01}
    assert settings_from(defenses["ms"], source) == {"eps": 0.1}


@pytest.mark.parametrize("name", ["ms", "rs-reg", "cert-reg"])
def test_estimate_interval_covers_the_true_statistic(name: str) -> None:
    """Draws N(0.4, 0.1^2) (clipping to [0, 1] negligible): median = mean = trimmed mean = 0.4."""
    d = create_defense(name, ToyNR(), sigma=0.25)
    conf, trials, n = 0.9, 400, 201
    gen = torch.Generator().manual_seed(0)
    v = 0.4 + 0.1 * torch.randn((trials, n), generator=gen, dtype=torch.float64)
    ests = d.intervals(v, confidence=conf)  # type: ignore[attr-defined]
    assert all(e.low <= e.point <= e.high for e in ests)
    misses = sum(not (e.low <= 0.4 <= e.high) for e in ests)
    # Misses stay within the nominal 10%, up to a one-sided binomial 0.999 tolerance.
    assert misses <= stats.binom.ppf(0.999, trials, 1 - conf)
    if name == "rs-reg":  # Hoeffding on the model's [0, 1] range, closed form
        half = (ests[0].high - ests[0].low) / 2
        assert half == pytest.approx(math.sqrt(math.log(2 / (1 - conf)) / (2 * n)), rel=1e-12)


def test_fs_iqa_estimate_and_certify_hand_on_their_evidence(defenses: dict[str, CertifiedDefense]) -> None:
    fs = defenses["fs-iqa"]
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    certs = fs.certify(x, n=500, alpha=0.999, generator=torch.Generator().manual_seed(0))
    for c in certs:
        assert c.evidence is not None and c.evidence.features.shape == (512,)
        assert "evidence" not in c.to_dict()
    prem = fs.audit_premise(x, None, certs, attacked=x, steps=2, generator=torch.Generator().manual_seed(0))
    assert all(p["feature_radius"] == 0.25 and p["feature_change"] >= 0 for p in prem)
    ests = fs.estimate(x, n=2001, confidence=0.99, generator=torch.Generator().manual_seed(0))
    assert all(e.low <= e.point <= e.high for e in ests)


@pytest.mark.parametrize(("k", "n", "p0"), [(0, 10, 0.1), (3, 10, 0.1), (10, 50, 0.001), (5, 5, 0.5), (0, 0, 0.1)])
def test_binomial_upper_pvalue_matches_scipy(k: int, n: int, p0: float) -> None:
    want = 1.0 if n == 0 else stats.binomtest(k, n, p0, alternative="greater").pvalue
    assert binomial_upper_pvalue(k, n, p0) == pytest.approx(want, rel=1e-9)


def test_holm_matches_statsmodels() -> None:
    rng = torch.Generator().manual_seed(3)
    for _ in range(50):
        p = (torch.rand(7, generator=rng) ** 3).tolist()
        want = multipletests(p, alpha=0.05, method="holm")[0].tolist()
        assert holm(p, level=0.05) == want


@pytest.mark.slow
def test_verify_audits_every_certified_defense(tmp_path: Path) -> None:
    from robustbench_iqa.runner import VerifyConfig, run_verify

    cfg = VerifyConfig.from_mapping({
        "models": ["default-nr"], "defenses": list(CERTIFIED), "limit": 2, "n": 300, "alpha": 0.99,
        "studies": ["certify", "audit"], "audit": {"n": 300, "steps": 2, "eot": 2, "resample_n": 600}})
    outcome = run_verify(cfg, tmp_path / "run", report=False, progress=False)
    assert outcome.passed, outcome.failures
    audited = {c.defense for c in outcome.checks if c.name == "certificate audit"}
    assert audited == set(CERTIFIED)
