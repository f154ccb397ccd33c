"""FS-IQA's sound radii (Lipschitz, local) never exceed the true radius; the first-order one is reported beside them.

The true radius r* = sup {r : max_{||u|| <= r} ||B(x+u) - B(x)||_2 <= sigma_f} is computable on
toys: for a linear backbone r* = sigma_f / ||W||; on a smooth CNN with 3 input dimensions (a
1x1 RGB image) by dense search of the ball.  On the shipped embedded models the feature-space
attack (the audit's own) must never exceed sigma_f inside the sound radii.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from robustbench_iqa.attacks.feature_space import feature_space_attack
from robustbench_iqa.certify.defense import create_defense
from robustbench_iqa.certify.fs_iqa import FeatureSmoothedIQA
from robustbench_iqa.certify.heads import FTN, Scorer
from robustbench_iqa.certify.result import AbstainReason
from robustbench_iqa.data.embedded import embedded_dataset
from robustbench_iqa.errors import InputError
from robustbench_iqa.lipschitz.composition import LipschitzBound, sequential_bound
from robustbench_iqa.models.base import Backbone, IQAModel, Mode
from robustbench_iqa.models.embedded import EmbeddedFR, EmbeddedNR
from robustbench_iqa.models.registry import create_model
from tests.toy_models import ToyNR, random_images


class LinearBackbone(IQAModel):
    """b(x) = W flatten(x): the true radius of B = A o b (A linear) is sigma / ||A W||."""

    name = "linear-backbone"
    mode = Mode.NR

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(d_in, d_out, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(d_out, d_in, generator=g) * torch.linspace(0.1, 2, d_in))

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return self.lin(x.flatten(1))

    def lipschitz_bound(self, input_size: tuple[int, int] | None) -> LipschitzBound:
        return sequential_bound([self.lin])[0]


def test_linear_backbone_true_radius() -> None:
    h = w = 4
    model = LinearBackbone(3 * h * w, 10)
    torch.manual_seed(1)
    ftn = nn.Sequential(nn.Linear(10, 6))  # linear: B = A W x + c exactly
    fs = FeatureSmoothedIQA(Backbone(model), ftn, Scorer(6, 8), sigma=0.25)
    x = random_images(3, h, w, seed=2) * 0.5 + 0.25
    res = fs.certify(x, n=500, alpha=0.99, tau=0.0, method="exact", generator=torch.Generator().manual_seed(0))
    aw = ftn[0].weight.detach().double() @ model.lin.weight.detach().double()
    true_radius = 0.25 / float(torch.linalg.matrix_norm(aw, ord=2))
    _, _, vh = torch.linalg.svd(aw)
    for r in res:
        assert r.eps_x == r.eps_x_first_order == pytest.approx(true_radius, rel=1e-5)  # exact for a linear B
        assert r.eps_x_lipschitz is not None and r.eps_x_lipschitz <= true_radius * (1 + 1e-9)
        assert r.eps_x_local is None  # not requested
    # The worst direction moves the features by exactly sigma at the true radius.
    u = vh[0].reshape(1, 3, h, w).float()
    with torch.no_grad():
        f0 = fs.normalized_features(x[:1])
        at_true = (fs.normalized_features(x[:1] + true_radius * u) - f0).norm()
        at_lip = (fs.normalized_features(x[:1] + res[0].eps_x_lipschitz * u) - f0).norm()
    assert float(at_true) == pytest.approx(0.25, rel=1e-4)
    assert float(at_lip) <= 0.25 * (1 + 1e-5)


def _tiny_cnn_fs(seed: int) -> FeatureSmoothedIQA:
    torch.manual_seed(seed)
    model = EmbeddedNR(channels=(6, 8, 8, 8)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    ftn = FTN(model.feature_dim, 12).eval()
    ftn.get_buffer("std").uniform_(0.05, 0.5)
    return FeatureSmoothedIQA(Backbone(model), ftn, Scorer(12, 8), sigma=0.25)


def _max_change_on_ball(fs: FeatureSmoothedIQA, x: torch.Tensor, r: float, dirs: torch.Tensor) -> float:
    """max over a dense grid of the ball (directions x radii) of ||B(x+u) - B(x)||_2, for a 3-dim input."""
    with torch.no_grad():
        f0 = fs.normalized_features(x)
        best = 0.0
        for t in torch.linspace(0.05, 1.0, 20):
            z = x + (r * float(t)) * dirs.reshape(-1, 3, 1, 1)
            best = max(best, float((fs.normalized_features(z) - f0).norm(dim=1).max()))
    return best


def _fibonacci_sphere(n: int) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64) + 0.5
    phi = torch.acos(1 - 2 * i / n)
    theta = math.pi * (1 + 5**0.5) * i
    return torch.stack([torch.cos(theta) * torch.sin(phi), torch.sin(theta) * torch.sin(phi), torch.cos(phi)], 1).float()


@pytest.mark.parametrize("seed", [0, 1])
def test_sound_radii_never_exceed_the_true_radius_by_dense_search(seed: int) -> None:
    """A smooth CNN (the embedded architecture) on 1x1 RGB images: the ball is 3-dimensional, so a dense
    grid of it finds max ||B(x+u) - B(x)|| (up to the grid), and with it the true radius by bisection."""
    fs = _tiny_cnn_fs(seed)
    x = torch.full((1, 3, 1, 1), 0.5) + 0.1 * torch.randn(1, 3, 1, 1, generator=torch.Generator().manual_seed(seed))
    dirs = _fibonacci_sphere(4000)
    res = fs.certify(x, n=500, alpha=0.99, tau=0.0, method="exact", local_radius=True,
                     generator=torch.Generator().manual_seed(0))[0]
    assert res.eps_x_lipschitz is not None and res.eps_x_local is not None
    lo, hi = 0.0, 4 * res.eps_x_first_order
    for _ in range(30):  # the grid's radius: an upper estimate of r* (the grid can only miss worse points)
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _max_change_on_ball(fs, x, mid, dirs) <= fs.sigma else (lo, mid)
    true_radius = hi
    assert res.eps_x_lipschitz <= res.eps_x_local <= true_radius
    assert _max_change_on_ball(fs, x, res.eps_x_local, dirs) <= fs.sigma
    assert res.lipschitz_bound is not None and fs.sigma / res.lipschitz_bound == pytest.approx(res.eps_x_lipschitz)


def _heldout(n: int, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    _, test = embedded_dataset().split(seed=0, train_fraction=0.8)
    xs, refs = zip(*(test.load(i) for i in range(n)), strict=True)
    x, ref = torch.stack(xs), torch.stack(refs)  # type: ignore[arg-type]
    if size is not None:
        x, ref = x[..., : size[0], : size[1]].contiguous(), ref[..., : size[0], : size[1]].contiguous()
    return x, ref


@pytest.mark.parametrize("name", ["default-nr", "default-fr"])
def test_feature_attack_never_exceeds_sigma_inside_the_sound_radii(name: str) -> None:
    model = create_model(name)
    fs = create_defense("fs-iqa", model, sigma=0.25)
    x, ref = _heldout(3, (32, 48))
    ref_ = ref if model.full_reference else None
    res = fs.certify(x, ref_, n=500, alpha=0.99, local_radius=True, generator=torch.Generator().manual_seed(0))
    for kind in ("eps_x_lipschitz", "eps_x_local"):
        eps = torch.tensor([getattr(r, kind) for r in res])
        assert bool((eps > 0).all()) and bool((eps <= torch.tensor([r.eps_x for r in res])).all())
        att = feature_space_attack(lambda z: fs.normalized_features(z, ref_), x, eps, steps=20, restarts=2,
                                   generator=torch.Generator().manual_seed(1))
        assert bool((att.feature_change <= fs.sigma).all()), (kind, att.feature_change)
    # The first-order radius is an estimate: it can be far larger than the sound ones.
    assert all(r.eps_x_local < r.eps_x_first_order for r in res)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["default-nr", "default-fr"])
def test_feature_attack_inside_eps_x_lipschitz_on_full_size_images(name: str) -> None:
    model = create_model(name)
    fs = create_defense("fs-iqa", model, sigma=0.25)
    x, ref = _heldout(8)
    ref_ = ref if model.full_reference else None
    res = fs.certify(x, ref_, n=500, alpha=0.99, generator=torch.Generator().manual_seed(0))
    eps = torch.tensor([r.eps_x_lipschitz for r in res])
    att = feature_space_attack(lambda z: fs.normalized_features(z, ref_), x, eps, steps=50, restarts=4,
                               generator=torch.Generator().manual_seed(1))
    assert bool((att.feature_change <= fs.sigma).all())


def test_models_without_a_bound_get_none_and_the_first_order_radius_is_unchanged() -> None:
    torch.manual_seed(0)
    fs = FeatureSmoothedIQA(Backbone(ToyNR()), FTN(16, 32), Scorer(32, 8), sigma=0.25)
    x = random_images(2, 12, 12, seed=1)
    res = fs.certify(x, n=300, alpha=0.99, tau=0.0, method="exact", local_radius=True)
    assert all(r.eps_x_lipschitz is None and r.eps_x_local is None and r.lipschitz_bound is None for r in res)
    assert all(r.eps_x == r.eps_x_first_order == pytest.approx(0.25 / r.spectral_norm) for r in res)
    assert fs.lipschitz_bound((12, 12)) is None
    off = fs.certify(x, n=300, alpha=0.99, tau=0.0, method="exact", lipschitz=False)
    assert [r.eps_x for r in off] == [r.eps_x for r in res]


class _Constant(IQAModel):
    """b(x) = a constant: J_B = 0 everywhere."""

    name = "constant"
    mode = Mode.NR

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("f", torch.linspace(0, 1, 4))

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return self.f.expand(x.shape[0], -1) + 0 * x.flatten(1)[:, :1]


@pytest.mark.parametrize(("method", "delta"), [("exact", None), ("lanczos", None), ("lanczos", 1e-3)])
def test_tau_zero_with_a_zero_jacobian_abstains_instead_of_dividing_by_zero(method: str, delta: float | None) -> None:
    torch.manual_seed(0)
    fs = FeatureSmoothedIQA(Backbone(_Constant()), FTN(4, 8), Scorer(8, 4), sigma=0.25)
    res = fs.certify(random_images(2, 6, 6), n=300, alpha=0.99, tau=0.0, method=method, delta=delta,
                     generator=torch.Generator().manual_seed(0))
    assert all(r.abstained and r.reason is AbstainReason.ZERO_JACOBIAN and r.eps_x is None for r in res)


@pytest.mark.parametrize("alpha", [0.001, 0.05, 0.4999])
def test_alpha_below_one_half_is_refused_with_the_convention_explained(alpha: float) -> None:
    torch.manual_seed(0)
    fs = FeatureSmoothedIQA(Backbone(ToyNR()), FTN(16, 32), Scorer(32, 8), sigma=0.25)
    x = random_images(1, 8, 8)
    with pytest.raises(InputError, match="confidence level.*not the error probability of Cohen"):
        fs.certify(x, n=300, alpha=alpha)
    with pytest.raises(InputError, match=f"alpha={1 - alpha:g}"):
        create_defense("ms", ToyNR(), sigma=0.25).certify(x, n=300, alpha=alpha)
    assert fs.certify(x, n=3000, alpha=0.5, tau=0.0)[0].alpha == 0.5


def test_statements_say_what_alpha_covers() -> None:
    fs = create_defense("fs-iqa", create_model("default-nr"), sigma=0.25)
    r = fs.certify(_heldout(1, (24, 24))[0], n=500, alpha=0.99, generator=torch.Generator().manual_seed(0))[0]
    for phrase in ("noise draws only", "population median", "first-order estimate", "eps_x_lipschitz",
                   "random start is not covered", "sample median"):
        assert phrase in r.statement
    assert isinstance(fs.backbone.model, EmbeddedNR) and not isinstance(fs.backbone.model, EmbeddedFR)
