"""Registry entries of the published IQA models of the FS-IQA study.

NR (KonIQ-10k): ``dbcnn``, ``hyperiqa`` (pyiqa architectures), ``koncept``
(KonCept512, rebuilt with timm).  FR (KADID-10k): ``lpips``, ``dists`` (pyiqa
architectures), ``dreamsim`` (timm ViT ensemble).  Plus the family
``pyiqa:<metric>[@<layer>[:input|:output]]`` for any pyiqa metric.

Every factory takes ``weights``: ``None`` = the real architecture with random
initialization and no download; ``"pretrained"`` = the published weights via
pyiqa/timm/torchvision downloads; a path = a local checkpoint.  See
:mod:`robustbench_iqa.models.weights`.  Nothing is imported or downloaded when
this module is imported; pyiqa and timm load when a model is built.
"""

from __future__ import annotations

from pathlib import Path

import torch

from robustbench_iqa.models.base import IQAModel
from robustbench_iqa.models.dreamsim import create_dreamsim
from robustbench_iqa.models.koncept import create_koncept
from robustbench_iqa.models.pyiqa_adapters import (
    DBCNN,
    DISTS,
    LPIPS,
    HyperIQA,
    PyiqaMetric,
    build_pyiqa_net,
    parse_pyiqa_name,
)
from robustbench_iqa.models.registry import register_model, register_prefix

Weights = str | Path | None

PUBLISHED_NR: tuple[str, ...] = ("dbcnn", "hyperiqa", "koncept")
PUBLISHED_FR: tuple[str, ...] = ("lpips", "dists", "dreamsim")


@register_model("dbcnn", mode="nr", lower_better=False, score_range=(0.0, 1.0),
                description="DBCNN (pyiqa; NR, higher=better): VGG-16 x SCNN bilinear pool -> linear")
def _dbcnn(*, weights: Weights = None, device: torch.device | None = None) -> IQAModel:
    return DBCNN(build_pyiqa_net("dbcnn", weights, name="dbcnn"), "dbcnn", "dbcnn")


@register_model("hyperiqa", mode="nr", lower_better=False, score_range=(0.0, 1.0),
                description="HyperIQA (pyiqa; NR, higher=better): ResNet-50 + hyper network")
def _hyperiqa(*, weights: Weights = None, device: torch.device | None = None) -> IQAModel:
    return HyperIQA(build_pyiqa_net("hyperiqa", weights, name="hyperiqa"), "hyperiqa", "hyperiqa")


@register_model("koncept", mode="nr", lower_better=False, score_range=(1.0, 5.0),
                description="KonCept512 (timm Inception-ResNet-v2 + FC head; NR, higher=better)")
def _koncept(*, weights: Weights = None, device: torch.device | None = None) -> IQAModel:
    return create_koncept(weights)


@register_model("lpips", mode="fr", lower_better=True, score_range=(0.0, 1.0),
                description="LPIPS v0.1, AlexNet (pyiqa; FR distance, lower=better)")
def _lpips(*, weights: Weights = None, device: torch.device | None = None) -> IQAModel:
    net = build_pyiqa_net("lpips", weights, name="lpips", trunk_prefixes=("net.",))
    return LPIPS(net, "lpips", "lpips")


@register_model("dists", mode="fr", lower_better=True, score_range=(0.0, 1.0),
                description="DISTS (pyiqa; FR distance, lower=better): VGG-16 structure/texture")
def _dists(*, weights: Weights = None, device: torch.device | None = None) -> IQAModel:
    net = build_pyiqa_net("dists", weights, name="dists", trunk_prefixes=("stage",))
    return DISTS(net, "dists", "dists")


@register_model("dreamsim", mode="fr", lower_better=True, score_range=(0.0, 2.0),
                description="DreamSim ensemble (timm DINO + CLIP + OpenCLIP ViTs; FR distance)")
def _dreamsim(*, weights: Weights = None, device: torch.device | None = None) -> IQAModel:
    return create_dreamsim(weights)


@register_prefix("pyiqa", description="any pyiqa metric, pyiqa:<metric>[@<layer>[:input|:output]]")
def create_pyiqa_model(
    sub: str, *, weights: Weights = None, device: torch.device | None = None
) -> IQAModel:
    """``pyiqa:<metric>[@<layer>[:input|:output]]``: any pyiqa metric with a hooked feature layer.

    ``@layer`` names a submodule of pyiqa's network (``named_modules()``); its
    output is b(x) unless ``:input`` is appended.  Without ``@layer``, b(x) is
    the input of the last Linear/Conv2d layer.
    """
    metric, layer, take = parse_pyiqa_name(sub)
    net = build_pyiqa_net(metric, weights, name=f"pyiqa:{metric}")
    return PyiqaMetric(net, metric, f"pyiqa:{sub}", layer=layer, take=take)
