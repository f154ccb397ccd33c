"""Every registered certified defense on the embedded NR and FR models, out of the box (shipped heads
and denoisers)."""

from __future__ import annotations

import math

import pytest
import torch

from robustbench_iqa import create_dataset, create_model
from robustbench_iqa.certify import create_defense, list_defenses
from robustbench_iqa.certify.defense import settings_from
from robustbench_iqa.certify.result import Guarantee

DEFENSES = list_defenses(certified=True)
SIGMA, EPS = 0.25, 0.125


@pytest.fixture(scope="module")
def images() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    _, test = create_dataset("default").split(seed=0)
    xs, refs = zip(*(test.load(i) for i in range(2)), strict=True)
    # Central 32x48 crops keep the input-space defenses (n forward passes each) fast.
    crop = (slice(None), slice(None), slice(32, 64), slice(40, 88))
    return {"x": torch.stack(xs)[crop], "ref": torch.stack(refs)[crop]}  # type: ignore[arg-type]


def test_the_suite_ships_its_six_certified_defenses() -> None:
    # the empirical (uncertified) defenses are covered by test_empirical_defenses.py
    assert {"fs-iqa", "ms", "dms", "dms-iqa", "rs-reg", "cert-reg"} <= set(DEFENSES)


@pytest.mark.parametrize("model_name", ["default-nr", "default-fr"])
@pytest.mark.parametrize("name", DEFENSES)
def test_defense_runs_on_embedded_model(name: str, model_name: str, images: dict[str, torch.Tensor]) -> None:
    model = create_model(model_name)
    defense = create_defense(name, model, sigma=SIGMA)
    x = images["x"]
    ref = images["ref"] if model.full_reference else None
    opts = settings_from(defense, {"tau": 1e-3, "eps": EPS})  # each takes its own
    n = 100

    def run(seed: int) -> list:  # type: ignore[type-arg]
        return defense.certify(x, ref, n=n, alpha=0.9, generator=torch.Generator().manual_seed(seed), **opts)

    res = run(0)
    again = run(0)
    assert [r.to_dict() for r in res] == [r.to_dict() for r in again]  # same seed, same result
    pred = defense.predict(x, ref, n=n, generator=torch.Generator().manual_seed(1))
    assert pred.shape == (2,) and bool(torch.isfinite(pred).all())
    for r in res:
        assert math.isfinite(r.score)
        if r.abstained:
            assert r.reason is not None
            continue
        assert r.lower is not None and r.upper is not None and r.eps_x is not None
        if r.guarantee is not Guarantee.PROBABILISTIC:
            assert r.lower <= r.score <= r.upper
        if r.spectral_norm is not None:  # a feature-space radius: sigma_f / ||J_B(x)||_2
            assert r.eps_x * r.spectral_norm == pytest.approx(SIGMA, rel=1e-9)
        else:
            assert r.eps_x == pytest.approx(EPS)
    # The defended score stays within the model's range of scores, up to the smoothing.
    assert pred.min() > -1.0 and pred.max() < 2.0


@pytest.mark.parametrize("model_name", ["default-nr", "default-fr"])
def test_fs_iqa_abstains_on_embedded_model_when_tau_exceeds_the_norm(
    model_name: str, images: dict[str, torch.Tensor]
) -> None:
    model = create_model(model_name)
    fs = create_defense("fs-iqa", model, sigma=SIGMA)
    ref = images["ref"] if model.full_reference else None
    ok = fs.certify(images["x"], ref, n=200, alpha=0.99, tau=1e-3, generator=torch.Generator().manual_seed(0))
    norms = [r.spectral_norm for r in ok]
    tau = 2 * max(norms)  # type: ignore[type-var]
    res = fs.certify(images["x"], ref, n=200, alpha=0.99, tau=tau, generator=torch.Generator().manual_seed(0))
    assert all(r.abstained and r.reason is not None and r.reason.value == "jacobian_norm_below_tau" for r in res)
    assert all(r.lower is None and r.eps_x is None for r in res)
    assert [r.score for r in res] == [r.score for r in ok]  # abstaining does not change S


@pytest.mark.parametrize("model_name", ["default-nr", "default-fr"])
def test_shipped_fs_iqa_heads_reproduce_their_heldout_correlation(model_name: str) -> None:
    import json
    from importlib import resources

    from scipy import stats

    recorded = json.loads((resources.files("robustbench_iqa") / "weights" / "fs-iqa-heads.json").read_text())
    model = create_model(model_name)
    fs = create_defense("fs-iqa", model, sigma=SIGMA)
    _, test = create_dataset("default").split(seed=0)
    scores, labels = [], []
    gen = torch.Generator().manual_seed(0)
    for start in range(0, len(test), 32):
        idx = range(start, min(start + 32, len(test)))
        xs, refs = zip(*(test.load(i) for i in idx), strict=True)
        ref = torch.stack(refs) if model.full_reference else None  # type: ignore[arg-type]
        scores += fs.predict(torch.stack(xs), ref, n=200, generator=gen).tolist()
        labels += [test.samples[i].score for i in idx]
    srcc = abs(stats.spearmanr(scores, labels).statistic)
    want = recorded["heldout"][model_name][f"{SIGMA:g}"]["srcc"]
    assert srcc == pytest.approx(want, abs=0.03), (srcc, want)
