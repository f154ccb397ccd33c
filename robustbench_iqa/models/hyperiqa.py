"""HyperIQA (Su et al., "Blindly Assess Image Quality in the Wild Guided by a Self-Adaptive
Hyper Network", CVPR 2020) on pyiqa's ``HyperNet``, with its evaluation protocol and both
checkpoint layouts.

b(x) = per 224 x 224 crop, [multi-scale local-distortion features (224), hyper-network input
map (112 x 7 x 7)]; head = the hyper network that generates the target network's weights, the
target network, and the mean over crops (``head(features(x)) == pyiqa's forward``).

**Protocol** (keyword options, reported by :attr:`HyperIQA.protocol`):

* ``crops="uniform"``, ``num_crops=25``, ``input_size="native"`` (default): pyiqa's
  evaluation, 25 crops on a uniform grid of the image as given; deterministic.
* ``crops="random"``, ``input_size="512x384"``: the authors' KonIQ-10k test protocol
  (``Resize((512, 384))``, i.e. 512 high and 384 wide, then random 224 crops, 25 at test time),
  with the crop positions drawn once per image size from ``crop_seed`` (the same positions for
  every image, so the backbone is a fixed function of the image, as FS-IQA requires).
* ``crops="resize"``: one 224 x 224 resize of the whole image (fast, not published).

**Weights**: pyiqa's checkpoint (``HyperIQA-resnet50-koniq10k-*.pth``, ``{"params": ...}``) or
the authors' ``koniq_pretrained.pkl`` (a state dict of their ``HyperNet``: ``res.*``,
``conv1.*``, ``fc<i>w_conv``, ``fc<i>b_fc``), converted by :func:`hyperiqa_state_from_authors`.
The authors' model predicts on their 0-100 scale (``MOS_zscore`` of KonIQ-10k), pyiqa's
checkpoint on 0-1, the registered range of ``hyperiqa``: the conversion divides the authors'
last target layer (weights and bias, both generated linearly by ``fc5w_fc``/``fc5b_fc``) by
100, so the converted model is exactly the authors' score / 100.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import torch

from robustbench_iqa.errors import InputError
from robustbench_iqa.models.protocol import Size, parse_size, resize_to, size_text
from robustbench_iqa.models.pyiqa_adapters import PyiqaAdapter

PATCH = 224
GRID = 7  # spatial size of the hyper-network input map for a 224 patch
AUTHORS_SIZE = "512x384"


class Crops(StrEnum):
    UNIFORM = "uniform"
    RANDOM = "random"
    RESIZE = "resize"


class HyperIQA(PyiqaAdapter):
    """HyperIQA with b = ResNet-50 + local-distortion-aware modules + hyper input reducer."""

    def __init__(self, net: Any, metric: str, name: str, *, crops: Crops | str = Crops.UNIFORM,
                 num_crops: int | None = None, input_size: Size = None, crop_seed: int = 0) -> None:
        super().__init__(net, metric, name)
        try:
            self.crops = Crops(crops)
        except ValueError:
            raise InputError(f"hyperiqa crops must be one of {[c.value for c in Crops]}, got {crops!r}") from None
        if num_crops is None:
            num_crops = 1 if self.crops is Crops.RESIZE else 25
        if int(num_crops) < 1 or (self.crops is Crops.RESIZE and int(num_crops) != 1):
            raise InputError(f"hyperiqa num_crops must be >= 1 (exactly 1 with crops='resize'), got {num_crops}")
        self.num_crops = int(num_crops)
        self.input_size = parse_size(input_size, what="hyperiqa input_size")
        self.crop_seed = int(crop_seed)
        self.lda_dim = sum(m[-1].out_features for m in net.lda_modules)
        self.hyper_channels = net.conv1[-2].out_channels

    @property
    def protocol(self) -> dict[str, object]:
        out: dict[str, object] = {"crops": self.crops.value, "num_crops": self.num_crops,
                                  "input_size": size_text(self.input_size)}
        if self.crops is Crops.RANDOM:
            out["crop_seed"] = self.crop_seed
        return out

    def crop_origins(self, height: int, width: int) -> list[tuple[int, int]]:
        """Top-left corners of the random crops of an image of this size (``crops="random"``)."""
        g = torch.Generator().manual_seed(self.crop_seed)
        tops = torch.randint(0, height - PATCH + 1, (self.num_crops,), generator=g)
        lefts = torch.randint(0, width - PATCH + 1, (self.num_crops,), generator=g)
        return [(int(t), int(s)) for t, s in zip(tops, lefts, strict=True)]

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B * num_crops, 3, 224, 224), crop-major within each image."""
        x = resize_to(x, self.input_size)
        if self.crops is Crops.RESIZE:
            return resize_to(x, (PATCH, PATCH))
        if self.crops is Crops.UNIFORM:
            from pyiqa.archs.arch_util import uniform_crop

            return uniform_crop([x], PATCH, self.num_crops)
        h, w = x.shape[-2:]
        if min(h, w) < PATCH:
            raise InputError(f"hyperiqa random crops need images of at least {PATCH}x{PATCH}, got {h}x{w}")
        crops = [x[..., t:t + PATCH, s:s + PATCH] for t, s in self.crop_origins(h, w)]
        return torch.stack(crops, dim=1).reshape(-1, x.shape[1], PATCH, PATCH)

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        x, _ = self.check_inputs(x, ref)
        net = self.net
        patches = net.preprocess(self._patches(x))
        stages = net.base_model(patches)[1:]
        lda = torch.cat([m(f) for f, m in zip(stages, net.lda_modules)], dim=1)
        hyper_in = net.conv1(stages[-1])
        per_patch = torch.cat([lda, hyper_in.flatten(1)], dim=1)
        return per_patch.reshape(x.shape[0], -1)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        net = self.net
        b = feats.shape[0]
        per_patch = feats.reshape(b * self.num_crops, -1)
        h = per_patch[:, : self.lda_dim].unsqueeze(1)
        hyper_in = per_patch[:, self.lda_dim :].reshape(-1, self.hyper_channels, GRID, GRID)
        layers = len(net.fc_w_modules)
        for i in range(layers):
            w = net.fc_w_modules[i](hyper_in).reshape(hyper_in.shape[0], net.hyper_fc_channels[i], -1)
            bias = net.fc_b_modules[i](hyper_in).unsqueeze(1)
            h = torch.bmm(h, w.transpose(1, 2)) + bias
            if i < layers - 1:
                h = torch.sigmoid(h)
        return h.reshape(b, self.num_crops).mean(dim=1)


# --------------------------------------------------------- the authors' checkpoint
def is_authors_layout(state: dict[str, torch.Tensor]) -> bool:
    """Whether a state dict is the authors' ``HyperNet`` (``res.*``, ``fc1w_conv.*``)."""
    return any(k.startswith("res.") for k in state) and any(k.startswith("fc1w_conv.") for k in state)


def _rename(key: str) -> str:
    if key.startswith("res.lda"):
        i, rest = int(key[7]) - 1, key[9:]  # res.lda<i>_pool.0.weight / res.lda<i>_fc.weight
        if rest.startswith("pool."):
            return f"lda_modules.{i}.{rest[len('pool.'):]}"
        if rest.startswith("fc."):
            return f"lda_modules.{i}.{3 if i < 3 else 2}.{rest[len('fc.'):]}"
    if key.startswith("res."):
        return "base_model." + key[len("res."):]
    for i in range(1, 6):
        if key.startswith(f"fc{i}w_conv."):
            return f"fc_w_modules.{i - 1}.{key.split('.', 1)[1]}"
        if key.startswith(f"fc{i}w_fc."):
            return f"fc_w_modules.{i - 1}.2.{key.split('.', 1)[1]}"
        if key.startswith(f"fc{i}b_fc."):
            return f"fc_b_modules.{i - 1}.2.{key.split('.', 1)[1]}"
    return key  # conv1.* has the same names


AUTHORS_SCALE = 100.0
"""The authors' scores are ``AUTHORS_SCALE`` times the 0-1 scale of pyiqa's checkpoint."""


def hyperiqa_state_from_authors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' ``HyperNet`` state dict in pyiqa's ``HyperNet`` names, on the 0-1 scale.

    ``res.<resnet>`` -> ``base_model.<resnet>``; ``res.lda<i>_pool.0`` -> ``lda_modules.<i-1>.0``;
    ``res.lda<i>_fc`` -> ``lda_modules.<i-1>.3`` (``.2`` for the 4th, which has no convolution);
    ``fc<i>w_conv`` -> ``fc_w_modules.<i-1>``; ``fc5w_fc`` -> ``fc_w_modules.4.2``;
    ``fc<i>b_fc`` -> ``fc_b_modules.<i-1>.2``; ``conv1.*`` unchanged.  The generated target
    weights are reshaped the same way in both codes, so outputs agree (tested against the
    authors' code) up to the factor :data:`AUTHORS_SCALE`: the last target layer's generators
    (``fc5w_fc``, ``fc5b_fc``: weight and bias) are divided by it.
    """
    out = {_rename(k): v for k, v in state.items()}
    if len(out) != len(state):
        raise InputError("the authors' HyperIQA checkpoint has colliding keys after renaming")
    for key in ("fc_w_modules.4.2.weight", "fc_w_modules.4.2.bias", "fc_b_modules.4.2.weight",
                "fc_b_modules.4.2.bias"):
        if key not in out:
            raise InputError(f"the authors' HyperIQA checkpoint lacks the last target layer ({key})")
        out[key] = out[key] / AUTHORS_SCALE
    return out
