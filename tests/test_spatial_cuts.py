"""Spatial FR cuts of pyiqa metrics give a fixed-size b(x), and FS-IQA refuses an over-wide backbone
with one line before caching features or building its FTN."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from robustbench_iqa.certify.heads import FTN, MAX_FEATURES
from robustbench_iqa.certify.training import extract_features
from robustbench_iqa.errors import InputError
from robustbench_iqa.models.registry import create_model
from tests.toy_models import random_images


@pytest.mark.parametrize("metric,width", [("lpips", 1152), ("stlpips", 1152), ("lpips-vgg", 1472)])
def test_lpips_family_cut_is_fixed_size_and_its_head_is_exact(metric: str, width: int) -> None:
    torch.set_num_threads(1)
    model = create_model(f"pyiqa:{metric}", weights="random")
    for size in (48, 80):
        x, r = random_images(2, size, size, seed=size), random_images(2, size, size, seed=size + 1)
        with torch.no_grad():
            feats = model.features(x, r)
            assert feats.shape == (2, width)
            torch.testing.assert_close(model.head(feats), model(x, r), rtol=1e-5, atol=1e-6)


def test_dists_cut_is_fixed_size() -> None:
    torch.set_num_threads(1)
    model = create_model("pyiqa:dists", weights="random")
    dims = set()
    for size in (64, 96):
        x, r = random_images(1, size, size, seed=1), random_images(1, size, size, seed=2)
        with torch.no_grad():
            dims.add(tuple(model.features(x, r).shape))
    assert dims == {(1, 2 * (3 + 64 + 128 + 256 + 512 + 512))}


def test_pyiqa_stlpips_on_the_real_weights_equals_st_lpips_alex() -> None:
    """Two independent rebuilds of ST-LPIPS (pyiqa's architecture, this suite's plain layers) on the
    package's trained file give the same b(x, ref) and the same distance."""
    pytest.importorskip("stlpips_pytorch")
    from robustbench_iqa.models.stlpips import package_weights

    generic = create_model("pyiqa:stlpips", weights=str(package_weights("alex")))
    ours = create_model("st-lpips-alex")
    x, r = random_images(2, 64, 96, seed=5), random_images(2, 64, 96, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(generic.features(x, r), ours.features(x, r), rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(generic(x, r), ours(x, r), rtol=0, atol=1e-5)


def test_ftn_refuses_an_over_wide_backbone_before_allocating() -> None:
    t0 = time.perf_counter()
    with pytest.raises(InputError, match=r"Linear\(8157632, 512\) would need 15\.6 GiB") as info:
        FTN(8_157_632)
    assert "\n" not in str(info.value) and time.perf_counter() - t0 < 1.0
    assert FTN(MAX_FEATURES // 1024).in_dim == MAX_FEATURES // 1024  # a pooled width is fine


class _Wide(nn.Module):
    calls = 0

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        type(self).calls += 1
        return x.new_zeros(x.shape[0], MAX_FEATURES + 1)


def test_feature_cache_refuses_an_over_wide_backbone_at_the_first_batch() -> None:
    import tempfile
    from pathlib import Path

    from robustbench_iqa.data.base import IQADataset, IQASample
    from robustbench_iqa.data.images import save_image

    with tempfile.TemporaryDirectory() as d:
        samples = []
        for i, img in enumerate(random_images(40, 16, 16, seed=3)):
            p = Path(d) / f"i{i}.png"
            save_image(img, p)
            samples.append(IQASample(f"i{i}", p, 0.5))
        ds = IQADataset("wide", tuple(samples), size=(16, 16))
        _Wide.calls = 0
        with pytest.raises(InputError, match="features per image"):
            extract_features(_Wide(), ds, full_reference=False, batch_size=4, progress=False)
        assert _Wide.calls == 1
