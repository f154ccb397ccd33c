"""The 1-Lipschitz embedded models: every layer and the whole backbone never stretch distances.

Checks against exact Jacobian norms (dense, float64, small images), random pairs and a
gradient-ascent attack on the stretch ratio ||b(x) - b(y)|| / ||x - y||; the shipped
weights: certified bound <= 1 (+ rounding), the training record reproduced, and FS-IQA's
Lipschitz radius on them.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.func import jacrev

from robustbench_iqa.attacks.feature_space import feature_space_attack
from robustbench_iqa.certify.defense import create_defense
from robustbench_iqa.certify.fs_iqa import shipped_checkpoint
from robustbench_iqa.data.embedded import embedded_dataset
from robustbench_iqa.models.embedded import shipped_weights
from robustbench_iqa.models.lipschitz_embedded import LipschitzFR, LipschitzNR
from robustbench_iqa.models.lipschitz_layers import Abs, Downsample, NormalizedPointwise, SLLConv
from robustbench_iqa.models.registry import create_model, list_models

TINY = 1e-6  # float32 rounding of the normalized weights


def _jac_norm(fn, x: torch.Tensor) -> float:  # type: ignore[no-untyped-def]
    j = jacrev(fn)(x).detach()
    return float(torch.linalg.matrix_norm(j.reshape(-1, x.numel()), ord=2))


def _randomized_sll(seed: int, channels: int = 3) -> SLLConv:
    torch.manual_seed(seed)
    layer = SLLConv(channels).double()
    with torch.no_grad():
        layer.weight.mul_(3.0)
        layer.bias.normal_()
        layer.log_q.normal_()
    return layer


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sll_layer_is_1_lipschitz_exactly_and_certified(seed: int) -> None:
    layer = _randomized_sll(seed)
    g = torch.Generator().manual_seed(seed)
    for _ in range(4):
        x = torch.randn(1, 3, 5, 6, generator=g, dtype=torch.float64)
        assert _jac_norm(layer, x) <= 1 + 1e-9
    x, y = (torch.randn(64, 3, 5, 6, generator=g, dtype=torch.float64) for _ in range(2))
    with torch.no_grad():
        ratio = (layer(x) - layer(y)).flatten(1).norm(dim=1) / (x - y).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= 1 + 1e-9
    bound = layer.lipschitz_bound((5, 6))
    assert bound.value == 1.0 and "rho=" in bound.terms[0][0]


def test_sll_bound_falls_back_when_the_premise_fails() -> None:
    """With t shrunk below Schur's row sums the premise K K^* <= T can fail; the bound then says so."""
    layer = _randomized_sll(0)
    layer.t = lambda: SLLConv.t(layer) / 50  # type: ignore[method-assign]
    assert layer.lipschitz_bound((5, 6)).value > 1.0


def test_pointwise_and_downsample_layers() -> None:
    torch.manual_seed(0)
    pw = NormalizedPointwise(12, 5)
    assert 1 - TINY <= pw.lipschitz_bound((4, 4)).value <= 1 + TINY
    x = torch.randn(2, 3, 7, 9)
    assert torch.allclose(Downsample()(x).norm(), x.norm())  # odd sizes: zero padding then a permutation
    assert Downsample()(x).shape == (2, 12, 4, 5) and Downsample().output_size((7, 9)) == (4, 5)
    assert torch.equal(Abs()(x), x.abs())


@pytest.mark.parametrize("cls", [LipschitzNR, LipschitzFR])
def test_random_backbones_never_stretch_beyond_their_certified_bound(cls: type) -> None:
    torch.manual_seed(0)
    model = cls().double().eval()
    size = (9, 11)
    bound = model.lipschitz_bound(size).value
    assert bound <= 1 + TINY
    g = torch.Generator().manual_seed(1)
    ref = torch.rand(1, 3, *size, generator=g, dtype=torch.float64) if cls is LipschitzFR else None
    for _ in range(3):
        x = torch.rand(1, 3, *size, generator=g, dtype=torch.float64)
        assert _jac_norm(lambda z: model.features(z, ref), x) <= bound


def _stretch_attack(model: torch.nn.Module, x: torch.Tensor, ref: torch.Tensor | None, *, steps: int = 30) -> float:
    """Gradient ascent on ||b(x + d) - b(x)|| / ||d|| over d (small and large), the largest ratio found."""
    best = 0.0
    with torch.no_grad():
        f0 = model.features(x, ref)
    for scale in (1e-3, 1e-1, 1.0):
        d = (torch.randn(x.shape, generator=torch.Generator().manual_seed(2)) * scale).requires_grad_(True)
        opt = torch.optim.Adam([d], lr=0.05 * scale)
        for _ in range(steps):
            ratio = (model.features(x + d, ref) - f0).norm() / d.norm()
            best = max(best, float(ratio.detach()))
            opt.zero_grad()
            (-ratio).backward()
            opt.step()
    return best


@pytest.fixture(scope="module")
def heldout() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    _, test = embedded_dataset().split(seed=0, train_fraction=0.8)
    xs, refs = zip(*(test.load(i) for i in range(len(test))), strict=True)
    return torch.stack(xs), torch.stack(refs), np.array([s.score for s in test])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["default-nr-lip", "default-fr-lip"])
def test_shipped_lipschitz_models(name: str, heldout: tuple[torch.Tensor, torch.Tensor, np.ndarray]) -> None:
    assert name in list_models()
    model = create_model(name)
    x, ref, y = heldout
    size = (x.shape[-2], x.shape[-1])
    bound = model.lipschitz_bound(size).value
    assert bound <= 1 + TINY
    r = ref[:1] if model.full_reference else None
    assert _stretch_attack(model, x[:1], r, steps=15) <= bound
    with torch.no_grad():
        s = torch.cat([model(x[i : i + 64], ref[i : i + 64] if model.full_reference else None)
                       for i in range(0, len(x), 64)]).numpy()
    quality = -s if model.lower_better else s
    srcc = stats.spearmanr(quality, y).statistic
    record = json.loads((shipped_weights(name).parent / "embedded-lipschitz-training.json").read_text())
    assert record["models"][name]["heldout_srcc"] == pytest.approx(srcc, abs=0.02)
    assert record["models"][name]["lipschitz_bound_backbone"] == pytest.approx(bound, rel=1e-6)


@pytest.mark.parametrize("name", ["default-nr-lip", "default-fr-lip"])
def test_fs_iqa_on_the_lipschitz_models_is_a_theorem_end_to_end(
    name: str, heldout: tuple[torch.Tensor, torch.Tensor, np.ndarray]
) -> None:
    """eps_x_lipschitz = sigma_f / (Lip(FTN) Lip(b)) with Lip(b) <= 1 certified."""
    assert shipped_checkpoint(name, 0.25) is not None
    model = create_model(name)
    fs = create_defense("fs-iqa", model, sigma=0.25)
    x, ref, _ = heldout
    r = ref[:3] if model.full_reference else None
    res = fs.certify(x[:3], r, n=500, alpha=0.99, generator=torch.Generator().manual_seed(0))
    ftn = fs.ftn.lipschitz_bound().value
    backbone = model.lipschitz_bound((x.shape[-2], x.shape[-1])).value
    for c in res:
        assert c.eps_x_lipschitz == pytest.approx(0.25 / (ftn * backbone), rel=1e-9)
        assert c.eps_x_lipschitz >= 0.25 / ftn * (1 - TINY) and c.eps_x_lipschitz <= c.eps_x
    assert math.isfinite(ftn)
    eps = torch.tensor([c.eps_x_lipschitz for c in res])
    att = feature_space_attack(lambda z: fs.normalized_features(z, r), x[:3], eps, steps=20, restarts=2,
                               generator=torch.Generator().manual_seed(1))
    assert bool((att.feature_change <= 0.25).all())
