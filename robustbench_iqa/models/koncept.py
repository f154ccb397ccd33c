"""KonCept512 (Hosu et al., "KonIQ-10k: An Ecologically Valid Database for Deep
Learning of Blind Image Quality Assessment", IEEE TIP 2020), rebuilt in PyTorch.

KonCept512 is not part of pyiqa.  Its architecture: an Inception-ResNet-v2
trunk (timm ``inception_resnet_v2``, built with ``pretrained=False`` unless
ImageNet weights are asked for), global average pooling (b(x), D = 1536), and a
fully connected head ``FC 2048 -> FC 1024 -> FC 256 -> FC 1``, each hidden layer
followed by ReLU, batch normalisation and dropout (rates 0.25, 0.25, 0.5), trained
on KonIQ-10k MOS at 512 x 384 pixels.  The trunk expects inputs scaled to
[-1, 1] (Inception preprocessing), done here from [0, 1].

The published weights are Keras files; there is no PyTorch download, so
``weights="pretrained"`` raises :class:`WeightsUnavailableError` and a converted
state dict must be given as ``weights=PATH``.  ``weights="pretrained-base"``
loads timm's ImageNet trunk with a random head.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from robustbench_iqa.errors import InputError, WeightsUnavailableError
from robustbench_iqa.models.base import IQAModel, Mode
from robustbench_iqa.models.weights import WeightsKind, building, load_checkpoint, parse_weights

KONCEPT_KERAS_URL = "https://github.com/subpic/koniq"
TRUNK_DIM = 1536
HIDDEN: tuple[int, ...] = (2048, 1024, 256)
DROPOUT: tuple[float, ...] = (0.25, 0.25, 0.5)
MIN_SIZE = 75  # smallest input the Inception-ResNet-v2 stem accepts


def koncept_head(in_dim: int = TRUNK_DIM) -> nn.Sequential:
    """The KonCept512 regression head: (Linear -> ReLU -> BatchNorm -> Dropout) x 3 -> Linear."""
    layers: list[nn.Module] = []
    d = in_dim
    for width, p in zip(HIDDEN, DROPOUT, strict=True):
        layers += [nn.Linear(d, width), nn.ReLU(), nn.BatchNorm1d(width), nn.Dropout(p)]
        d = width
    layers.append(nn.Linear(d, 1))
    return nn.Sequential(*layers)


class KonCept512(IQAModel):
    """NR model; higher = better; score on KonIQ-10k's MOS scale [1, 5]."""

    name = "koncept"
    mode = Mode.NR
    lower_better = False
    score_range = (1.0, 5.0)

    def __init__(self, *, imagenet_trunk: bool = False) -> None:
        super().__init__()
        import timm

        with building(self.name, backbone=imagenet_trunk):
            self.trunk = timm.create_model(
                "inception_resnet_v2", pretrained=imagenet_trunk, num_classes=0, global_pool="avg"
            )
        self.fc = koncept_head(TRUNK_DIM)
        for p in self.parameters():
            p.requires_grad_(False)

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        x, _ = self.check_inputs(x, ref)
        if min(x.shape[-2:]) < MIN_SIZE:
            raise InputError(
                f"KonCept512 needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels, got {tuple(x.shape[-2:])}"
            )
        return self.trunk(x * 2 - 1)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(feats).squeeze(-1)


def create_koncept(weights: str | Path | None = None) -> KonCept512:
    """Build KonCept512 with the suite's ``weights`` semantics (see :mod:`.weights`)."""
    kind, path = parse_weights(weights)
    if kind is WeightsKind.PRETRAINED:
        raise WeightsUnavailableError(
            "KonCept512's published weights are Keras .h5 files with no PyTorch download "
            f"(see {KONCEPT_KERAS_URL}); convert them to a state dict of this adapter and pass weights=PATH, "
            "or use weights='pretrained-base' for the ImageNet trunk with a random head"
        )
    model = KonCept512(imagenet_trunk=kind is WeightsKind.PRETRAINED_BASE)
    if path is not None:
        load_checkpoint(model, path, what="the KonCept512 adapter (trunk.*, fc.*)")
    return model
