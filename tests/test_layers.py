"""The fixed layers of real perceptual networks equal the official ST-LPIPS code on random inputs."""

from __future__ import annotations

import pytest
import torch

from robustbench_iqa.lipschitz.layers import BlurPool2d, ChannelNorm, SpatialMean, binomial_filter


def _official_downsample():  # type: ignore[no-untyped-def]
    from robustbench_iqa.models.stlpips import import_official

    return import_official("stlpips_pytorch.models_lpf.downsample").Downsample


def test_binomial_filter_is_normalised_pascal_row() -> None:
    f = binomial_filter(5)
    a = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    torch.testing.assert_close(f, (a[:, None] * a[None, :]) / 256.0)
    with pytest.raises(ValueError):
        binomial_filter(8)


@pytest.mark.parametrize("filt_size,pad_more", [(3, True), (3, False), (5, True), (2, False)])
def test_blurpool_equals_the_official_downsample(filt_size: int, pad_more: bool) -> None:
    pytest.importorskip("stlpips_pytorch")
    official = _official_downsample()(filt_size=filt_size, stride=2, channels=4, pad_more=pad_more)
    pad = official.pad_sizes
    ours = BlurPool2d(channels=4, filt_size=filt_size, stride=2, pad=tuple(pad), pad_mode="reflect")
    x = torch.randn(2, 4, 17, 22, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours(x), official(x), rtol=0, atol=1e-6)


def test_channel_norm_and_spatial_mean_closed_forms() -> None:
    x = torch.randn(3, 5, 4, 6, generator=torch.Generator().manual_seed(1))
    n = ChannelNorm(eps=1e-10)(x)
    torch.testing.assert_close(n.pow(2).sum(dim=1), torch.ones(3, 4, 6), atol=1e-6, rtol=0)
    torch.testing.assert_close(SpatialMean()(x), x.flatten(2).mean(-1))
    with pytest.raises(TypeError):
        ChannelNorm(1e-10)  # type: ignore[misc]
