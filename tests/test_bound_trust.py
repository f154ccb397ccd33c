"""Certified bounds trust nothing they did not read: exact classes, no hooks, no replaced forward,
finite and exactly scaled norms.  References: the dense operator of what the layer really computes."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_iqa.errors import BoundUnavailableError
from robustbench_iqa.lipschitz.composition import (
    LipschitzBound,
    module_lipschitz_bound,
    sequential_bound,
)
from robustbench_iqa.lipschitz.gram_iteration import (
    checked_norm,
    conv_layer_bound,
    conv_operator_matrix,
    gram_iteration_bound,
    matrix_spectral_bound,
    max_gram_iteration_bound,
)
from robustbench_iqa.lipschitz.layers import BlurPool2d, ChannelNorm, SpatialMean

SIZE = (6, 6)


def _dense_norm(fn, shape: tuple[int, ...]) -> float:  # type: ignore[no-untyped-def]
    """||fn||_2 of a linear map from its dense matrix (float64), the independent reference."""
    n = math.prod(shape)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    with torch.no_grad():
        out = fn(eye).reshape(n, -1)
    return float(torch.linalg.svdvals(out).max())


class StdConv2d(nn.Conv2d):
    """Weight standardisation in forward (as timm's StdConv2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True, unbiased=False) + 1e-6)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class ScaledConv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 9.0 * super().forward(x)


def _small_conv(cls: type = nn.Conv2d) -> nn.Conv2d:
    torch.manual_seed(0)
    conv = cls(2, 3, 3, padding=1).double()
    with torch.no_grad():
        conv.weight.mul_(0.01)
    return conv


def test_findings_reproduced_the_raw_weight_bound_is_far_below_what_runs() -> None:
    """The three findings: a bound read from .weight is 10x-100x below the layer's real norm."""
    raw = conv_operator_matrix(_small_conv(), SIZE)
    raw_norm = float(torch.linalg.svdvals(raw).max())
    std = _small_conv(StdConv2d)
    hooked = _small_conv()
    hooked.register_forward_hook(lambda m, i, o: 9.0 * o)
    for layer, factor in ((std, 20.0), (_small_conv(ScaledConv2d), 8.9), (hooked, 8.9)):
        real = _dense_norm(lambda e, layer=layer: layer(e) - layer(torch.zeros_like(e[:1])), (2, *SIZE))
        assert real >= factor * raw_norm


@pytest.mark.parametrize("make", [
    lambda: _small_conv(StdConv2d),
    lambda: _small_conv(ScaledConv2d),
])
def test_conv_subclasses_are_refused_by_name(make) -> None:  # type: ignore[no-untyped-def]
    layer = make()
    for call in (lambda: conv_layer_bound(layer, SIZE), lambda: sequential_bound([layer], SIZE),
                 lambda: module_lipschitz_bound(nn.Sequential(layer), SIZE)):
        with pytest.raises(BoundUnavailableError, match=type(layer).__name__):
            call()


def _hook_variants(layer: nn.Module) -> list[nn.Module]:
    import copy

    a, b, c = copy.deepcopy(layer), copy.deepcopy(layer), copy.deepcopy(layer)
    a.register_forward_hook(lambda m, i, o: 9.0 * o)
    b.register_forward_pre_hook(lambda m, i: (9.0 * i[0],))
    c.forward = lambda x: 9.0 * type(c).forward(c, x)  # type: ignore[method-assign]
    return [a, b, c]


LAYERS = {
    "Conv2d": lambda: nn.Conv2d(2, 2, 3, padding=1),
    "Linear": lambda: nn.Linear(4, 4),
    "BatchNorm2d": lambda: nn.BatchNorm2d(2).eval(),
    "ReLU": nn.ReLU,
    "GELU": nn.GELU,
    "MaxPool2d": lambda: nn.MaxPool2d(2),
    "BlurPool2d": lambda: BlurPool2d(channels=2),
    "ChannelNorm": ChannelNorm,
    "SpatialMean": SpatialMean,
    "ReflectionPad2d": lambda: nn.ReflectionPad2d(1),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_every_layer_type_refuses_hooks_and_replaced_forward(name: str) -> None:
    base = LAYERS[name]()
    size = None if name == "Linear" else SIZE
    sequential_bound([base], size)  # the plain layer is bounded
    for variant in _hook_variants(base):
        with pytest.raises(BoundUnavailableError, match=name):
            sequential_bound([variant], size)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_every_layer_type_refuses_subclasses(name: str) -> None:
    base = LAYERS[name]()
    sub = type("Sub" + name, (type(base),), {})
    layer = LAYERS[name]()
    layer.__class__ = sub
    with pytest.raises(BoundUnavailableError, match="Sub" + name):
        sequential_bound([layer], None if name == "Linear" else SIZE)


def test_global_hooks_and_hooked_containers_are_refused() -> None:
    from torch.nn.modules.module import (
        register_module_forward_hook,
        register_module_forward_pre_hook,
    )

    net = nn.Sequential(nn.Conv2d(2, 2, 3), nn.ReLU())
    sequential_bound([net], SIZE)
    for register in (register_module_forward_hook, register_module_forward_pre_hook):
        handle = register(lambda *a: None)
        try:
            with pytest.raises(BoundUnavailableError, match="global"):
                sequential_bound([net], SIZE)
        finally:
            handle.remove()
    net.register_forward_hook(lambda m, i, o: 9.0 * o)
    with pytest.raises(BoundUnavailableError, match="Sequential"):
        sequential_bound([net], SIZE)
    with pytest.raises(BoundUnavailableError, match="Sequential"):
        module_lipschitz_bound(net, SIZE)


def test_weight_norm_parametrisation_is_refused() -> None:
    conv = nn.utils.parametrizations.weight_norm(nn.Conv2d(2, 2, 3))
    with pytest.raises(BoundUnavailableError, match="Conv2d"):
        sequential_bound([conv], SIZE)


@pytest.mark.parametrize("scale", [1e-200, 1e-150, 1.0, 1e150, 1e200])
def test_extreme_scales_keep_exact_conv_and_linear_bounds(scale: float) -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1).double()
    with torch.no_grad():
        conv.weight.mul_(scale)
    exact = float(torch.linalg.svdvals(conv_operator_matrix(conv, (5, 7))).max())
    assert exact > 0 and math.isfinite(exact)
    bound = conv_layer_bound(conv, (5, 7))
    assert exact <= bound <= 1.25 * exact
    w = torch.randn(5, 4, dtype=torch.float64) * scale
    exact_w = float(torch.linalg.svdvals(w).max())
    assert exact_w <= matrix_spectral_bound(w) <= exact_w * (1 + 1e-8)
    g = gram_iteration_bound(w)
    assert exact_w <= float(g) <= 1.01 * exact_w
    assert exact_w <= max_gram_iteration_bound(w[None]) <= 1.01 * exact_w


def test_non_finite_and_underflowing_norms_are_refused() -> None:
    conv = nn.Conv2d(2, 2, 3)
    with torch.no_grad():
        conv.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(BoundUnavailableError, match="finite"):
        conv_layer_bound(conv, SIZE)
    lin = nn.Linear(3, 3)
    with torch.no_grad():
        lin.weight[1, 1] = float("inf")
    with pytest.raises(BoundUnavailableError, match="finite"):
        sequential_bound([lin])
    w = torch.ones(2, 2)
    with pytest.raises(BoundUnavailableError, match="underflowed"):
        checked_norm(0.0, w, "a layer")
    with pytest.raises(BoundUnavailableError, match="non-finite"):
        checked_norm(float("inf"), w, "a layer")
    assert checked_norm(0.0, torch.zeros(2, 2), "a zero layer") == 0.0
    big = LipschitzBound(1e200)
    with pytest.raises(BoundUnavailableError, match="finite"):
        big.then(big)


@pytest.mark.parametrize("groups,c_in,c_out,stride", [(2, 4, 6, 1), (3, 3, 3, 2), (4, 4, 8, 1)])
def test_grouped_convolutions_are_bounded_against_the_dense_operator(groups: int, c_in: int, c_out: int,
                                                                     stride: int) -> None:
    torch.manual_seed(groups)
    conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, groups=groups)
    exact = float(torch.linalg.svdvals(conv_operator_matrix(conv, (6, 5))).max())
    bound = conv_layer_bound(conv, (6, 5))
    assert exact <= bound <= 1.3 * exact


def test_a_cached_bound_never_skips_the_checks() -> None:
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.ReLU())
    first = module_lipschitz_bound(net, SIZE).value
    net[0].stride = (2, 2)  # not in the state dict: still another network
    assert module_lipschitz_bound(net, SIZE).value != first
    net[0].__class__ = ScaledConv2d
    with pytest.raises(BoundUnavailableError, match="ScaledConv2d"):
        module_lipschitz_bound(net, SIZE)
    net[0].__class__ = nn.Conv2d
    module_lipschitz_bound(net, SIZE)
    net[0].register_forward_hook(lambda m, i, o: 9.0 * o)
    with pytest.raises(BoundUnavailableError, match="hook"):
        module_lipschitz_bound(net, SIZE)
