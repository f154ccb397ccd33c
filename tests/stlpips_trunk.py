"""The ST-LPIPS anti-aliased AlexNet trunk (Ghildyal & Liu 2022) from plain torch layers and the
project's BlurPool2d, loaded from the trained weights shipped in ``stlpips-pytorch`` (test helper)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from robustbench_iqa.lipschitz.layers import BlurPool2d
from robustbench_iqa.lipschitz.tapped import TappedFeatures


def alex_weights() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("stlpips_pytorch")
    assert spec is not None and spec.origin is not None
    return Path(spec.origin).parent / "weights" / "vST0.0" / "alex_shift_tolerant.pth"


def _blur(c: int) -> BlurPool2d:
    return BlurPool2d(channels=c, filt_size=3, stride=2, pad=(2, 2, 2, 2), pad_mode="reflect")


def alex_slices() -> list[nn.Sequential]:
    """slice1..slice5 of ``invariant_networks.alexnet(variant='shift_tolerant')``, same indices."""
    s1 = nn.Sequential(nn.Conv2d(3, 64, 11, stride=1, padding=2), _blur(64), nn.ReLU())
    s2 = nn.Sequential()
    for i, m in zip(range(3, 7), (nn.MaxPool2d(3, stride=1), _blur(64), nn.Conv2d(64, 192, 5, padding=2), nn.ReLU()),
                    strict=True):
        s2.add_module(str(i), m)
    s3 = nn.Sequential()
    for i, m in zip(range(7, 11), (nn.MaxPool2d(3, stride=1), _blur(192), nn.Conv2d(192, 384, 3, padding=1),
                                   nn.ReLU()), strict=True):
        s3.add_module(str(i), m)
    s4 = nn.Sequential()
    s4.add_module("11", nn.Conv2d(384, 256, 3, padding=1))
    s4.add_module("12", nn.ReLU())
    s5 = nn.Sequential()
    s5.add_module("13", nn.Conv2d(256, 256, 3, padding=1))
    s5.add_module("14", nn.ReLU())
    return [s1, s2, s3, s4, s5]


def alex_feature_map(*, reduction: str = "mean") -> TappedFeatures:
    """b on images in [0, 1]: LPIPS' input map 2x - 1, its ScalingLayer, the trained trunk, taps 1-5."""
    state = torch.load(alex_weights(), map_location="cpu", weights_only=True)
    slices = alex_slices()
    trunk = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
    for k, s in enumerate(slices):
        prefix = f"slice{k + 1}."
        s.load_state_dict({n[len(prefix):]: v for n, v in trunk.items() if n.startswith(prefix)}, strict=True)
    shift = state["scaling_layer.shift"].reshape(-1)
    scale = state["scaling_layer.scale"].reshape(-1)
    # (2x - 1 - shift) / scale = (x - (1 + shift) / 2) / (scale / 2)
    tf = TappedFeatures(slices=slices, shift=((1 + shift) / 2).tolist(), scale=(scale / 2).tolist(),
                        norm_eps=1e-10, reduction=reduction)
    return tf.eval()


def official_lpips_alex():  # type: ignore[no-untyped-def]
    """The official ``stlpips_pytorch.stlpips.LPIPS(net='alex', variant='shift_tolerant')`` (eval mode)."""
    from robustbench_iqa.models.stlpips import official_lpips

    return official_lpips("alex")
