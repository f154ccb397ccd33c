"""Registry entries of the published IQA models of the FS-IQA study.

NR (KonIQ-10k): ``dbcnn``, ``hyperiqa`` (pyiqa architectures), ``koncept``
(KonCept512, rebuilt with timm).  FR (KADID-10k): ``lpips``, ``dists`` (pyiqa
architectures), ``dreamsim`` (the ViT-B/16 ensemble, rebuilt with timm blocks).

Every factory takes ``weights``: ``"random"`` = the real architecture with random
initialization and no download; ``"pretrained"`` = the published weights via
pyiqa/timm/torchvision downloads (or their caches); a path = a local checkpoint in any
of the official formats (see each model's module and ``robustbench-iqa weights check``).
Each is registered with ``default_weights="none"``: :func:`~robustbench_iqa.models.registry.create_model`
refuses ``weights=None`` with an error naming these choices, so no published model is ever
random by accident.
The other keyword options are the model's evaluation protocol (:attr:`IQAModel.protocol`).
Nothing is imported or downloaded when this module is imported; pyiqa and timm load
when a model is built.
"""

from __future__ import annotations

from pathlib import Path

import torch

from robustbench_iqa.models.base import IQAModel
from robustbench_iqa.models.dreamsim import IMAGE_SIZE, create_dreamsim
from robustbench_iqa.models.hyperiqa import (
    Crops,
    HyperIQA,
    hyperiqa_state_from_authors,
    is_authors_layout,
)
from robustbench_iqa.models.koncept import SCORE_RANGE, TRAINING_SIZE, create_koncept
from robustbench_iqa.models.protocol import Size
from robustbench_iqa.models.pyiqa_adapters import DBCNN, DISTS, LPIPS, Trunk, build_pyiqa_net
from robustbench_iqa.models.registry import register_model

Weights = str | Path | None

PUBLISHED_NR: tuple[str, ...] = ("dbcnn", "hyperiqa", "koncept")
PUBLISHED_FR: tuple[str, ...] = ("lpips", "dists", "dreamsim")

ALEXNET_TRUNK = Trunk("https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                      r"^net\.slice\d+\.(\d+)\.(weight|bias)$", r"features.\1.\2")
VGG16_LPIPS_TRUNK = Trunk("https://download.pytorch.org/models/vgg16-397923af.pth",
                          r"^net\.slice\d+\.(\d+)\.(weight|bias)$", r"features.\1.\2")
VGG16_DISTS_TRUNK = Trunk("https://download.pytorch.org/models/vgg16-397923af.pth",
                          r"^stage\d\.(\d+)\.(weight|bias)$", r"features.\1.\2")


@register_model("dbcnn", mode="nr", lower_better=False, score_range=(0.0, 1.0), default_weights="none",
                description="DBCNN (pyiqa; NR, higher=better): VGG-16 x SCNN bilinear pool -> linear")
def _dbcnn(*, weights: Weights = None, device: torch.device | None = None,
           input_size: Size = None) -> IQAModel:
    net = build_pyiqa_net("dbcnn", weights, name="dbcnn")
    return DBCNN(net, "dbcnn", "dbcnn", input_size=input_size)


def _hyperiqa_checkpoint(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    if is_authors_layout(state):
        return hyperiqa_state_from_authors(state), ("the authors' HyperNet state dict (koniq_pretrained.pkl "
                                                    "layout), scores divided by 100 to pyiqa's 0-1 scale")
    return state, "state dict in pyiqa's layout"


@register_model("hyperiqa", mode="nr", lower_better=False, score_range=(0.0, 1.0), default_weights="none",
                description="HyperIQA (pyiqa; NR, higher=better): ResNet-50 + hyper network, 25 crops")
def _hyperiqa(*, weights: Weights = None, device: torch.device | None = None, crops: str = Crops.UNIFORM.value,
              num_crops: int | None = None, input_size: Size = None, crop_seed: int = 0) -> IQAModel:
    net = build_pyiqa_net("hyperiqa", weights, name="hyperiqa", convert=_hyperiqa_checkpoint)
    return HyperIQA(net, "hyperiqa", "hyperiqa", crops=crops, num_crops=num_crops, input_size=input_size,
                    crop_seed=crop_seed)


@register_model("koncept", mode="nr", lower_better=False, score_range=SCORE_RANGE, default_weights="none",
                description="KonCept512 (Inception-ResNet-v2 + FC head; NR, higher=better, 0-100 MOS scale)")
def _koncept(*, weights: Weights = None, device: torch.device | None = None,
             input_size: Size = TRAINING_SIZE) -> IQAModel:
    return create_koncept(weights, input_size=input_size)


@register_model("lpips", mode="fr", lower_better=True, score_range=(0.0, 1.0), default_weights="none",
                description="LPIPS v0.1, AlexNet (pyiqa; FR distance, lower=better)")
def _lpips(*, weights: Weights = None, device: torch.device | None = None, trunk: str | Path | None = None,
           input_size: Size = None) -> IQAModel:
    net = build_pyiqa_net("lpips", weights, name="lpips", trunk=ALEXNET_TRUNK, trunk_file=trunk)
    return LPIPS(net, "lpips", "lpips", input_size=input_size)


@register_model("dists", mode="fr", lower_better=True, score_range=(0.0, 1.0), default_weights="none",
                description="DISTS (pyiqa; FR distance, lower=better): VGG-16 structure/texture")
def _dists(*, weights: Weights = None, device: torch.device | None = None, trunk: str | Path | None = None,
           input_size: Size = None) -> IQAModel:
    net = build_pyiqa_net("dists", weights, name="dists", trunk=VGG16_DISTS_TRUNK, trunk_file=trunk)
    return DISTS(net, "dists", "dists", input_size=input_size)


@register_model("dreamsim", mode="fr", lower_better=True, score_range=(0.0, 2.0), default_weights="none",
                description="DreamSim ensemble (DINO + CLIP + OpenCLIP ViT-B/16, LoRA; FR distance)")
def _dreamsim(*, weights: Weights = None, device: torch.device | None = None, input_size: Size = IMAGE_SIZE,
              dino: str | Path | None = None) -> IQAModel:
    return create_dreamsim(weights, input_size=input_size, dino=dino)
