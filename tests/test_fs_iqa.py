"""FS-IQA end to end on tiny models: Algorithm 1's outputs and its bad-input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robustbench_iqa.certify.bounds import percentile_bounds
from robustbench_iqa.certify.fs_iqa import (
    FeatureSmoothedIQA,
    create_fs_iqa,
    load_fs_checkpoint,
    save_fs_checkpoint,
)
from robustbench_iqa.certify.heads import FTN, Scorer
from robustbench_iqa.certify.result import AbstainReason
from robustbench_iqa.certify.spectral import jacobian_spectral_norm
from robustbench_iqa.certify.training import evaluate_heads, fit_fs_heads
from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import Backbone
from tests.toy_models import ToyFR, ToyNR, random_images


def _fs(mode: str = "nr", sigma: float = 0.25) -> FeatureSmoothedIQA:
    model = ToyNR() if mode == "nr" else ToyFR()
    torch.manual_seed(0)
    return FeatureSmoothedIQA(Backbone(model), FTN(16, 64), Scorer(64, 32), sigma=sigma, mode=model.mode)


def _inputs(mode: str, b: int = 3) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = random_images(b, 24, 24, seed=1)
    return x, (random_images(b, 24, 24, seed=2) if mode == "fr" else None)


@pytest.mark.parametrize("mode", ["nr", "fr"])
def test_certify_outputs_are_consistent(mode: str) -> None:
    fs = _fs(mode)
    x, ref = _inputs(mode)
    ref0 = None if ref is None else ref.clone()
    res = fs.certify(x, ref, n=500, alpha=0.99, tau=1e-6, method="exact",
                     generator=torch.Generator().manual_seed(0))
    # Reproduce the noisy scores: "exact" consumes no random numbers before the noise.
    with torch.no_grad():
        v = fs.scores_from_features(fs.normalized_features(x, ref), n=500,
                                    generator=torch.Generator().manual_seed(0))
    norms = jacobian_spectral_norm(lambda z: fs.normalized_features(z, ref), x, method="exact").value
    for i, r in enumerate(res):
        assert not r.abstained
        assert r.lower <= r.score <= r.upper  # type: ignore[operator]
        assert r.score == pytest.approx(float(np.median(v[i].numpy())), abs=1e-6)
        lo, hi = percentile_bounds(v[i], sigma=0.25, eps=0.25, alpha=0.99)  # type: ignore[misc]
        assert (r.lower, r.upper) == pytest.approx((lo, hi))
        assert r.spectral_norm == pytest.approx(float(norms[i]), rel=1e-6)
        assert r.eps_x == pytest.approx(0.25 / r.spectral_norm)  # type: ignore[operator]
    if ref is not None:
        assert torch.equal(ref, ref0)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["nr", "fr"])
def test_abstains_when_tau_exceeds_the_norm(mode: str) -> None:
    fs = _fs(mode)
    x, ref = _inputs(mode, 2)
    res = fs.certify(x, ref, n=200, alpha=0.99, tau=1e6)
    assert all(r.abstained and r.reason is AbstainReason.JACOBIAN_NORM_BELOW_TAU for r in res)
    assert all(r.lower is None and r.upper is None and r.eps_x is None for r in res)
    assert all(np.isfinite(r.score) for r in res)


def test_under_converged_norm_abstains() -> None:
    fs = _fs()
    x, _ = _inputs("nr", 2)
    res = fs.certify(x, n=200, alpha=0.99, tau=0.0, method="lanczos", rtol=1e-12, max_iter=1)
    assert all(r.reason is AbstainReason.SPECTRAL_NORM_NOT_CONVERGED for r in res)


def test_power_method_never_certifies() -> None:
    fs = _fs()
    x, _ = _inputs("nr", 2)
    with pytest.raises(InputError, match="power method.*lanczos"):
        fs.certify(x, n=200, alpha=0.99, method="power")
    est = fs.spectral_estimate(x, method="power", rtol=1e-6)  # still available as an estimator
    with pytest.raises(InputError, match="power method"):
        fs.certify_from_estimate(est, n=200, alpha=0.99)


@pytest.mark.parametrize("mode", ["nr", "fr"])
def test_certify_from_the_upper_bound(mode: str) -> None:
    fs = _fs(mode)
    x, ref = _inputs(mode)
    exact = jacobian_spectral_norm(lambda z: fs.normalized_features(z, ref), x, method="exact").value
    plain = fs.certify(x, ref, n=500, alpha=0.99, tau=0.0, generator=torch.Generator().manual_seed(0))
    bound = fs.certify(x, ref, n=500, alpha=0.99, tau=0.0, delta=1e-3, generator=torch.Generator().manual_seed(0))
    for i, (p, b) in enumerate(zip(plain, bound, strict=True)):
        up = b.spectral_norm_upper
        assert not b.abstained and up is not None and b.eps_x is not None and b.spectral_norm is not None
        assert up >= float(exact[i])  # the bound holds (delta = 1e-3)
        assert up <= float(exact[i]) * 1.03  # and is tight (m = 64, k = 32: +1.3%)
        assert b.eps_x == pytest.approx(0.25 / up) and b.eps_x < p.eps_x  # type: ignore[operator]
        # The record states the confidence it has; the first-order fields keep first-order values.
        assert b.confidence == pytest.approx(0.99 - 1e-3) and p.confidence == 0.99
        assert b.to_dict()["confidence"] == pytest.approx(0.989)
        assert b.spectral_norm <= up and b.spectral_norm == pytest.approx(float(exact[i]), rel=1e-2)
        assert b.eps_x_first_order == pytest.approx(0.25 / b.spectral_norm) and b.eps_x_first_order >= b.eps_x
        assert p.spectral_norm_upper is None and p.eps_x_first_order == p.eps_x
        assert "alpha - delta = 0.989" in b.statement and "first-order" in b.statement
        assert "Lanczos estimate" in p.statement and "not a bound" in p.statement
    with pytest.raises(InputError, match="delta"):
        fs.certify(x, ref, n=500, alpha=0.99, delta=0.995)
    with pytest.raises(InputError, match="delta"):
        fs.certify(x, ref, n=500, alpha=0.99, delta=0.0)


def test_same_seed_same_result_other_seed_differs() -> None:
    fs = _fs()
    x, _ = _inputs("nr")
    a = fs.certify(x, n=300, alpha=0.99, generator=torch.Generator().manual_seed(5))
    b = fs.certify(x, n=300, alpha=0.99, generator=torch.Generator().manual_seed(5))
    c = fs.certify(x, n=300, alpha=0.99, generator=torch.Generator().manual_seed(6))
    assert [r.to_dict() for r in a] == [r.to_dict() for r in b]
    assert [r.score for r in a] != [r.score for r in c]
    p1 = fs.predict(x, n=300, generator=torch.Generator().manual_seed(1))
    p2 = fs.predict(x, n=300, generator=torch.Generator().manual_seed(1))
    assert torch.equal(p1, p2)


def test_predict_is_the_median_of_the_noisy_scores() -> None:
    fs = _fs()
    x, _ = _inputs("nr")
    s = fs.predict(x, n=401, generator=torch.Generator().manual_seed(3))
    v = fs.noisy_scores(x, n=401, generator=torch.Generator().manual_seed(3)).detach()
    np.testing.assert_allclose(s.numpy(), np.median(v.numpy(), axis=1), rtol=1e-6)


def test_noisy_scores_are_differentiable_in_x() -> None:
    fs = _fs()
    x, _ = _inputs("nr", 2)
    x = x.clone().requires_grad_(True)
    fs.noisy_scores(x, n=16, generator=torch.Generator().manual_seed(0)).mean().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0


def test_bad_inputs_give_clear_errors() -> None:
    fs, ffr = _fs("nr"), _fs("fr")
    x, _ = _inputs("nr", 1)
    with pytest.raises(InputError, match="too few"):
        fs.certify(x, n=10, alpha=0.999)
    with pytest.raises(InputError, match="NaN"):
        fs.predict(torch.full((1, 3, 8, 8), float("nan")), n=10)
    with pytest.raises(InputError, match="channels"):
        fs.predict(torch.rand(1, 1, 8, 8), n=10)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        fs.predict(torch.rand(1, 3, 8, 8) * 3, n=10)
    with pytest.raises(InputError, match="different sizes"):
        ffr.predict(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 9, 8), n=10)
    with pytest.raises(InputError, match="reference"):
        ffr.predict(torch.rand(1, 3, 8, 8), n=10)
    with pytest.raises(InputError, match="alpha"):
        fs.certify(x, n=100, alpha=1.5)
    with pytest.raises(InputError, match="sigma"):
        FeatureSmoothedIQA(Backbone(ToyNR()), FTN(16), Scorer(), sigma=0.0)
    with pytest.raises(InputError, match="n must be"):
        fs.predict(x, n=0)


def test_training_recovers_a_learnable_target_and_checkpoints_roundtrip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(0)
    f = torch.randn(240, 12, generator=g)
    y = torch.tanh(f[:, 0] + 0.5 * f[:, 1])
    ftn, scorer, hist = fit_fs_heads(f[:200], y[:200], sigma=0.1, out_dim=64, scorer_hidden=32,
                                     epochs=60, seed=0, progress=False)
    assert hist[-1] < hist[0]
    srcc, plcc = evaluate_heads(ftn, scorer, f[200:], y[200:], sigma=0.1, n=201)
    assert srcc > 0.9 and plcc > 0.9
    z = ftn(f)
    assert float(z.detach().min()) >= 0.0 and float(z.detach().max()) <= 1.0 and z.shape == (240, 64)
    path = tmp_path / "heads.safetensors"
    save_fs_checkpoint(path, ftn, scorer, sigma=0.1, model="toy-nr")
    ftn2, scorer2, info = load_fs_checkpoint(path)
    assert info["sigma"] == 0.1 and info["model"] == "toy-nr"
    with torch.no_grad():
        assert torch.equal(scorer(ftn(f)), scorer2(ftn2(f)))
    fs = create_fs_iqa(ToyNR(width=6), sigma=0.1, checkpoint=path)
    assert fs.predict(random_images(1, 16, 16), n=51).shape == (1,)
    with pytest.raises(InputError, match="trained at sigma"):
        create_fs_iqa(ToyNR(width=6), sigma=0.5, checkpoint=path)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read"):
        load_fs_checkpoint(bad)
    with pytest.raises(InputError, match="not found"):
        load_fs_checkpoint(tmp_path / "missing.safetensors")
    with pytest.raises(InputError, match="no trained FS-IQA heads"):
        create_fs_iqa(ToyNR(), sigma=0.3)
