"""Certified global Lipschitz bounds: per-layer constants and their composition, against exact
Jacobian norms (never above the bound) and the cases where the constants are attained."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import jacrev

from robustbench_iqa.certify.heads import FTN
from robustbench_iqa.errors import BoundUnavailableError, InputError
from robustbench_iqa.lipschitz.composition import (
    GELU_LIPSCHITZ,
    SILU_LIPSCHITZ,
    activation_lipschitz,
    channel_norm_bound,
    mean_std_pool_bound,
    module_lipschitz_bound,
    sequential_bound,
)
from robustbench_iqa.models.embedded import _EPS, EmbeddedFR, EmbeddedNR, channel_normalize
from robustbench_iqa.models.registry import create_model


def _jac_norm(fn, x: torch.Tensor) -> float:  # type: ignore[no-untyped-def]
    j = jacrev(fn)(x)
    return float(torch.linalg.matrix_norm(j.detach().reshape(-1, x.numel()), ord=2))


@pytest.mark.parametrize("act,const", [(nn.SiLU(), SILU_LIPSCHITZ), (nn.GELU(), GELU_LIPSCHITZ),
                                       (nn.Sigmoid(), 0.25), (nn.Tanh(), 1.0), (nn.ReLU(), 1.0)])
def test_activation_constants_are_the_supremum_of_the_derivative(act: nn.Module, const: float) -> None:
    t = torch.linspace(-12, 12, 2_000_001, dtype=torch.float64, requires_grad=True)
    (d,) = torch.autograd.grad(act(t).sum(), t)
    sup = float(d.abs().max())
    assert sup <= activation_lipschitz(act) == const
    assert sup >= const - 1e-9  # attained (up to the grid)


def test_unknown_layers_are_refused_by_type_name() -> None:
    for layer in (nn.AvgPool2d(2), nn.LayerNorm(4), nn.GELU(approximate="tanh")):
        with pytest.raises(BoundUnavailableError, match=type(layer).__name__):
            sequential_bound([layer], (8, 8))
    bn = nn.BatchNorm2d(3).train()
    with pytest.raises(InputError, match="batch statistics"):
        sequential_bound([nn.Conv2d(3, 3, 3), bn], (8, 8))


def test_mean_std_pooling_constant_holds_and_is_attained() -> None:
    """||pool(h) - pool(h')|| <= ||h - h'|| / sqrt(N); a constant shift attains it (mean part)."""
    g = torch.Generator().manual_seed(0)
    size = (5, 7)
    n = size[0] * size[1]

    def pool(h: torch.Tensor) -> torch.Tensor:
        return torch.cat([h.mean(dim=(1, 2)), torch.sqrt(h.var(dim=(1, 2), unbiased=False) + _EPS)])

    worst = 0.0
    for scale in (1e-3, 1e-1, 1.0, 10.0):
        h = torch.randn(4, *size, generator=g, dtype=torch.float64) * scale
        worst = max(worst, _jac_norm(pool, h) * math.sqrt(n))
        d = torch.randn(4, *size, generator=g, dtype=torch.float64)
        ratio = float((pool(h + d) - pool(h)).norm() / d.norm()) * math.sqrt(n)
        assert ratio <= 1 + 1e-9
    assert worst <= 1 + 1e-9
    h = torch.randn(2, *size, generator=g, dtype=torch.float64)
    ratio = float((pool(h + 0.3) - pool(h)).norm() / (0.3 * math.sqrt(2 * n)))
    assert ratio * math.sqrt(n) == pytest.approx(1.0, rel=1e-9)
    assert mean_std_pool_bound(size) * math.sqrt(n) == pytest.approx(1.0, rel=1e-8)


def test_channel_normalisation_constant_is_one_over_sqrt_eps_and_attained_at_zero() -> None:
    u0 = torch.zeros(1, 4, 1, 1, dtype=torch.float64)
    jn = _jac_norm(lambda u: channel_normalize(u), u0)
    assert jn == pytest.approx(1 / math.sqrt(_EPS), rel=1e-6)
    assert jn <= channel_norm_bound(_EPS)
    u = torch.randn(1, 4, 3, 3, dtype=torch.float64)
    assert _jac_norm(lambda z: channel_normalize(z), u) <= channel_norm_bound(_EPS)


def _random_net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.SiLU(),
        nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.GELU(),
        nn.Sequential(nn.Conv2d(8, 4, 3, stride=2, padding=0), nn.Tanh()),
        nn.Flatten(), nn.Linear(4 * 2 * 3, 5), nn.Sigmoid(),
    ).double()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.1, 2.0)
            m.weight.data.uniform_(-2, 2)
    return net.eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sequential_bound_is_never_below_the_jacobian_norm(seed: int) -> None:
    net = _random_net(seed)
    size = (10, 13)
    bound, out_size = sequential_bound(list(net), size)
    assert out_size == (2, 3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(5):
        x = torch.randn(1, 3, *size, generator=g, dtype=torch.float64) * 2
        assert _jac_norm(lambda z: net(z), x) <= bound.value
    assert module_lipschitz_bound(net, size).value == bound.value


@pytest.mark.parametrize("cls", [EmbeddedNR, EmbeddedFR])
def test_embedded_backbone_bounds_exceed_exact_jacobian_norms(cls: type) -> None:
    model = create_model("default-nr" if cls is EmbeddedNR else "default-fr").double()
    size = (12, 16)
    bound = model.lipschitz_bound(size)
    assert model.lipschitz_bound(size) is bound  # cached per weights and size
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 3, *size, generator=g, dtype=torch.float64)
    for _ in range(3):
        x = torch.rand(1, 3, *size, generator=g, dtype=torch.float64)
        r = ref if cls is EmbeddedFR else None
        assert _jac_norm(lambda z, r=r: model.features(z, r), x) <= bound.value
    if cls is EmbeddedFR:
        assert any("vacuous" in n for n in bound.notes)
    with pytest.raises(InputError, match="size"):
        model.lipschitz_bound(None)


def test_ftn_bound_folds_the_standardization_exactly() -> None:
    torch.manual_seed(0)
    for hidden in ((), (16,)):
        ftn = FTN(10, 7, hidden).double().eval()
        ftn.get_buffer("std").uniform_(0.01, 3.0)
        bound = ftn.lipschitz_bound()
        for _ in range(5):
            f = torch.randn(10, dtype=torch.float64) * 3
            assert _jac_norm(ftn, f) <= bound.value
    ftn = FTN(10, 7).double().eval()  # no hidden layer: bound = ||W diag(1/std)|| / 4, attained at pre-activation 0
    ftn.get_buffer("std").uniform_(0.01, 3.0)
    w = ftn.net[0].weight.detach() / ftn.get_buffer("std")
    assert ftn.lipschitz_bound().value == pytest.approx(float(torch.linalg.matrix_norm(w, ord=2)) / 4, rel=1e-8)
