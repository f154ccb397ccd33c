"""FS-IQA's hidden-layer noise: the same distribution of scores as Algorithm 1's feature noise.

``noise_space="hidden"`` draws W1 e ~ N(0, sigma^2 W1 W1^T) as sigma L z after the
scorer's first Linear layer instead of e ~ N(0, sigma^2 I) before it; these tests
check that the scores, their median and quantiles follow the same law, that the
hidden noise has the right covariance, and the seeding, gradient and fallback
behaviour.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp
from torch import nn

from robustbench_iqa.certify.fs_iqa import FeatureSmoothedIQA, NoiseSpace
from robustbench_iqa.certify.heads import FTN, Scorer
from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import Backbone
from tests.toy_models import ToyNR, random_images

SIGMA = 0.25


def _fs(noise_space: str = "hidden", *, feat: int = 64, hidden: int = 16, sigma: float = SIGMA,
        scorer: nn.Module | None = None) -> FeatureSmoothedIQA:
    torch.manual_seed(0)
    ftn = FTN(16, feat)
    scorer = Scorer(feat, hidden) if scorer is None else scorer
    with torch.no_grad():  # a scorer whose output depends non-trivially on the noise
        for p in scorer.parameters():
            p.mul_(3.0)
    return FeatureSmoothedIQA(Backbone(ToyNR()), ftn, scorer, sigma=sigma, noise_space=noise_space)


def _features(fs: FeatureSmoothedIQA, b: int = 2) -> torch.Tensor:
    with torch.no_grad():
        return fs.normalized_features(random_images(b, 24, 24, seed=1))


def _scores(fs: FeatureSmoothedIQA, f: torch.Tensor, n: int, seed: int) -> np.ndarray:
    with torch.no_grad():
        return fs.scores_from_features(f, n=n, generator=torch.Generator().manual_seed(seed)).double().numpy()


def test_hidden_path_is_used_by_default_and_plain_on_request() -> None:
    assert _fs().effective_noise_space is NoiseSpace.HIDDEN
    assert _fs("feature").effective_noise_space is NoiseSpace.FEATURE
    with pytest.raises(InputError, match="noise_space"):
        _fs("pixels")


def test_hidden_and_feature_noise_give_the_same_score_distribution() -> None:
    hid, plain = _fs("hidden"), _fs("feature")
    f = _features(hid)
    n = 20000
    a, b = _scores(hid, f, n, seed=1), _scores(plain, f, n, seed=2)
    qs = [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99]
    for i in range(f.shape[0]):
        assert ks_2samp(a[i], b[i]).pvalue > 1e-3
        spread = float(np.std(b[i]))
        assert spread > 1e-2  # the noise matters, so the test can tell distributions apart
        np.testing.assert_allclose(np.median(a[i]), np.median(b[i]), atol=0.05 * spread)
        np.testing.assert_allclose(np.quantile(a[i], qs), np.quantile(b[i], qs), atol=0.1 * spread)
    # ... and the predicted (median) score agrees between the paths.
    x = random_images(2, 24, 24, seed=1)
    pa = hid.predict(x, n=n, generator=torch.Generator().manual_seed(3))
    pb = plain.predict(x, n=n, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(pa, pb, atol=0.05 * spread, rtol=0.0)


def test_ks_detects_a_wrong_noise_scale() -> None:
    # The equivalence test above can fail: noise of the wrong scale is rejected.
    f = _features(_fs())
    a = _scores(_fs("hidden", sigma=SIGMA), f, 20000, seed=1)
    b = _scores(_fs("feature", sigma=1.2 * SIGMA), f, 20000, seed=2)
    assert ks_2samp(a[0], b[0]).pvalue < 1e-3


def test_hidden_noise_covariance_is_sigma2_w1_w1t() -> None:
    fs = _fs()
    factor = fs.hidden_noise_factor()
    assert factor is not None
    first, _, chol = factor
    w = first.weight.detach().double()
    torch.testing.assert_close(chol @ chol.T, w @ w.T, rtol=1e-10, atol=1e-10)
    # Capture what the rest of the scorer receives and remove the mean W1 f + b1.
    seen: list[torch.Tensor] = []
    assert isinstance(fs.scorer, Scorer)
    act = fs.scorer.net[1]
    handle = act.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        f = _features(fs, 1)
        with torch.no_grad():
            fs.scores_from_features(f, n=40000, generator=torch.Generator().manual_seed(5))
    finally:
        handle.remove()
    h = torch.cat(seen).double()
    with torch.no_grad():
        e = h - first(f).double()
    cov = e.T @ e / e.shape[0]
    target = SIGMA**2 * (w @ w.T)
    scale = float(target.diagonal().mean())
    # Sampling error of a covariance entry ~ sqrt(2/n) * scale ~ 0.007 scale at n = 40000.
    assert float((cov - target).abs().max()) < 0.05 * scale
    assert float(e.mean(0).abs().max()) < 0.05 * scale**0.5


def test_same_seed_same_output_other_seed_differs() -> None:
    fs = _fs()
    x = random_images(2, 24, 24, seed=1)

    def run(seed: int) -> torch.Tensor:
        return fs.noisy_scores(x, n=300, generator=torch.Generator().manual_seed(seed)).detach()

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))
    p1 = fs.predict(x, n=301, generator=torch.Generator().manual_seed(1))
    assert torch.equal(p1, fs.predict(x, n=301, generator=torch.Generator().manual_seed(1)))
    a = fs.certify(x, n=300, alpha=0.99, generator=torch.Generator().manual_seed(2))
    b = fs.certify(x, n=300, alpha=0.99, generator=torch.Generator().manual_seed(2))
    assert [r.to_dict() for r in a] == [r.to_dict() for r in b]


def test_randomness_comes_only_from_the_generator() -> None:
    fs = _fs()
    f = _features(fs)
    torch.manual_seed(123)
    a = _scores(fs, f, 200, seed=9)
    torch.manual_seed(456)
    b = _scores(fs, f, 200, seed=9)
    np.testing.assert_array_equal(a, b)


def test_chunking_does_not_change_the_samples_of_one_image() -> None:
    small, big = _fs(), _fs()
    small.chunk_size, big.chunk_size = 7, 1000
    f = _features(small, 1)  # one row: chunks consume the generator's stream in order
    np.testing.assert_allclose(_scores(small, f, 50, seed=3), _scores(big, f, 50, seed=3), rtol=1e-6, atol=1e-6)


def test_gradients_flow_to_the_image_through_hidden_noise() -> None:
    fs = _fs()
    assert fs.effective_noise_space is NoiseSpace.HIDDEN
    x = random_images(2, 24, 24, seed=1).requires_grad_(True)
    fs.noisy_scores(x, n=32, generator=torch.Generator().manual_seed(0)).mean().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())
    assert all(float(x.grad[i].abs().sum()) > 0 for i in range(2))
    # The same gradient as the plain path in expectation: at sigma -> 0 both are the clean gradient.
    g = {}
    for space in ("hidden", "feature"):
        m = _fs(space, sigma=1e-6)
        xi = random_images(2, 24, 24, seed=1).requires_grad_(True)
        m.noisy_scores(xi, n=4, generator=torch.Generator().manual_seed(0)).mean().backward()
        g[space] = xi.grad
    torch.testing.assert_close(g["hidden"], g["feature"], rtol=1e-3, atol=1e-7)


@pytest.mark.parametrize(
    "scorer",
    [
        pytest.param(lambda: Scorer(16, 32), id="more-outputs-than-inputs"),
        pytest.param(lambda: nn.Sequential(nn.GELU(), nn.Linear(16, 1)), id="not-linear-first"),
    ],
)
def test_falls_back_to_feature_noise(scorer) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(2)
    s = scorer()
    hid = _fs("hidden", feat=16, scorer=copy.deepcopy(s))
    plain = _fs("feature", feat=16, scorer=s)
    assert hid.hidden_noise_factor() is None
    assert hid.effective_noise_space is NoiseSpace.FEATURE
    f = _features(hid)
    # The fallback is the plain path itself: identical samples for the same seed.
    np.testing.assert_array_equal(_scores(hid, f, 100, seed=4), _scores(plain, f, 100, seed=4))


def test_falls_back_for_a_rank_deficient_first_layer() -> None:
    scorer = Scorer(64, 16)
    first = scorer.net[0]
    assert isinstance(first, nn.Linear)
    with torch.no_grad():
        first.weight[1] = 2.0 * first.weight[0]  # W1 W1^T singular
    fs = _fs(scorer=scorer)
    assert fs.effective_noise_space is NoiseSpace.FEATURE


def test_sequential_scorer_uses_hidden_noise() -> None:
    torch.manual_seed(1)
    seq = nn.Sequential(nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 1))
    fs = _fs(scorer=seq)
    assert fs.effective_noise_space is NoiseSpace.HIDDEN
    assert fs.scores_from_features(_features(fs), n=10).shape == (2, 10)
