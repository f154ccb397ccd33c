"""Bounds of the fixed layers of real perceptual networks against their dense operators (exact SVD)
or attaining perturbations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_iqa.lipschitz.composition import sequential_bound
from robustbench_iqa.lipschitz.layer_bounds import (
    blurpool_bound,
    blurpool_row_bound,
    maxpool_bound,
    pad_bound,
    pad_multiplicity,
)
from robustbench_iqa.lipschitz.layers import BlurPool2d, ChannelNorm, SpatialMean


def _dense(fn, shape: tuple[int, ...]) -> torch.Tensor:  # type: ignore[no-untyped-def]
    n = math.prod(shape)
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    with torch.no_grad():
        return fn(eye).reshape(n, -1).T


def _reflect_closed_form(n: int, left: int, right: int) -> int:
    return max(1 + (1 <= i <= left) + (n - 1 - right <= i <= n - 2) for i in range(n))


@pytest.mark.parametrize("n,left,right", [(5, 2, 2), (3, 2, 2), (4, 1, 2), (8, 3, 0), (6, 0, 0)])
def test_reflect_pad_multiplicity_is_the_closed_form(n: int, left: int, right: int) -> None:
    assert pad_multiplicity(n, (left, right), "reflect") == _reflect_closed_form(n, left, right)
    assert pad_multiplicity(n, (left, right), "replicate") == 1 + max(left, right)
    assert pad_multiplicity(n, (left, right), "zeros") == 1


@pytest.mark.parametrize("mode", ["reflect", "replicate", "zeros"])
@pytest.mark.parametrize("pad,size", [((2, 2, 2, 2), (5, 6)), ((1, 2, 0, 1), (4, 7)), ((2, 2, 2, 2), (3, 3))])
def test_pad_bound_is_the_exact_norm(mode: str, pad: tuple[int, int, int, int], size: tuple[int, int]) -> None:
    def fn(e: torch.Tensor) -> torch.Tensor:
        return F.pad(e, pad) if mode == "zeros" else F.pad(e, pad, mode=mode)

    exact = float(torch.linalg.svdvals(_dense(fn, (1, *size))).max())
    assert exact <= pad_bound(size, pad, mode) <= exact * (1 + 1e-8)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "zeros"])
@pytest.mark.parametrize("filt,stride,pad,size", [
    (3, 2, (2, 2, 2, 2), (9, 8)),   # ST-LPIPS: Downsample(filt_size=3, stride=2, pad_more=True)
    (3, 2, None, (7, 10)),
    (5, 2, None, (11, 9)),
    (4, 3, (1, 2, 2, 1), (8, 8)),
    (1, 2, None, (5, 5)),
])
def test_blurpool_bound_is_the_exact_norm_of_the_layer(mode: str, filt: int, stride: int,
                                                        pad: tuple[int, int, int, int] | None,
                                                        size: tuple[int, int]) -> None:
    layer = BlurPool2d(channels=2, filt_size=filt, stride=stride, pad=pad, pad_mode=mode)
    m = _dense(lambda e: layer(e), (2, *size))
    exact = float(torch.linalg.svdvals(m).max())
    bound, out = blurpool_bound(layer, size)
    assert exact <= bound <= exact * (1 + 1e-6)
    assert out == tuple(layer(torch.zeros(1, 2, *size)).shape[-2:])
    assert float(m.norm(dim=1).max()) <= blurpool_row_bound(layer, size)


def test_maxpool_bound_holds_and_is_attained() -> None:
    for k, s in ((3, 1), (3, 2), (2, 2), (3, 3)):
        layer = nn.MaxPool2d(k, stride=s)
        bound, out = maxpool_bound(layer, (9, 9))
        assert out == tuple(layer(torch.zeros(1, 1, 9, 9)).shape[-2:])
        assert bound == pytest.approx(math.ceil(k / s), rel=1e-8)
        # attained: one pixel, the maximum of every window that contains it, raised by t
        x = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
        x[0, 0, 4, 4] = 1.0
        dx = torch.zeros_like(x)
        dx[0, 0, 4, 4] = 0.5
        ratio = float((layer(x + dx) - layer(x)).norm() / dx.norm())
        assert ratio <= bound and (s > 1 or ratio >= bound * (1 - 1e-8))
        g = torch.Generator().manual_seed(k * 10 + s)
        for _ in range(50):
            a, b = torch.randn(2, 1, 3, 9, 9, generator=g, dtype=torch.float64)
            assert float((layer(a) - layer(b)).norm()) <= bound * float((a - b).norm())


@pytest.mark.parametrize("k,s,p,ceil", [(3, 1, 0, False), (3, 2, 1, True), (2, 2, 0, True), (3, 3, 1, True),
                                         (4, 3, 2, False), (5, 2, 2, True)])
def test_maxpool_output_size_is_torch_s(k: int, s: int, p: int, ceil: bool) -> None:
    layer = nn.MaxPool2d(k, stride=s, padding=p, ceil_mode=ceil)
    for size in ((7, 8), (9, 10), (5, 6), (12, 11)):
        assert maxpool_bound(layer, size)[1] == tuple(layer(torch.zeros(1, 1, *size)).shape[-2:])


def test_channel_norm_and_spatial_mean_constants() -> None:
    eps = 1e-3
    c, _ = sequential_bound([ChannelNorm(eps=eps)], (2, 2))
    assert c.value == pytest.approx(1 / eps, rel=1e-8)
    u = torch.zeros(1, 4, 1, 1, dtype=torch.float64)
    du = torch.full_like(u, 1e-9)
    n = ChannelNorm(eps=eps)
    assert float((n(u + du) - n(u)).norm() / du.norm()) == pytest.approx(1 / eps, rel=1e-5)
    m, size = sequential_bound([SpatialMean()], (3, 5))
    assert size is None and m.value == pytest.approx(1 / math.sqrt(15), rel=1e-8)
    d = torch.ones(1, 2, 3, 5)
    assert float(SpatialMean()(d).norm() / d.norm()) == pytest.approx(1 / math.sqrt(15))
