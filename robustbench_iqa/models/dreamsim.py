"""DreamSim (Fu et al., "DreamSim: Learning New Dimensions of Human Visual
Similarity using Synthetic Data", NeurIPS 2023), rebuilt with timm.

DreamSim's ensemble embeds an image with three ViT feature extractors and
concatenates the embeddings:

* DINO ViT-B/16: the class token (768), ImageNet normalisation;
* CLIP ViT-B/16 (OpenAI): the projected image embedding (512), CLIP normalisation;
* OpenCLIP ViT-B/32 (LAION-400M): the projected image embedding (512).

The distance of an image x to its reference r is ``d = 1 - cos(e(x), e(r))``
(lower = more similar).  For FS-IQA, b(x, r) = [e(x), e(r)] (D = 2 * 1792) and
the head is the cosine distance between the two halves.

The architectures are built with timm and ``pretrained=False`` (no download).
DreamSim's own weights (LoRA fine-tuning on NIGHTS) are distributed by the
``dreamsim`` package, not in this adapter's format: ``weights="pretrained"``
raises :class:`WeightsUnavailableError`; pass a converted state dict (LoRA
merged into the ViT weights, keys ``extractors.<i>.*``) as ``weights=PATH``.
``weights="pretrained-base"`` loads the un-tuned timm backbones (the ensemble
DreamSim starts from).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_iqa.errors import WeightsUnavailableError
from robustbench_iqa.models.base import IQAModel, Mode
from robustbench_iqa.models.weights import WeightsKind, building, load_checkpoint, parse_weights

DREAMSIM_URL = "https://github.com/ssundaram21/dreamsim"
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


@dataclass(frozen=True)
class Extractor:
    arch: str
    tag: str  # timm pretrained tag of the base weights
    num_classes: int  # 0: class token; 512: CLIP projection
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


ENSEMBLE: tuple[Extractor, ...] = (
    Extractor("vit_base_patch16_224", "dino", 0, *_IMAGENET),
    Extractor("vit_base_patch16_clip_224", "openai", 512, *_CLIP),
    Extractor("vit_base_patch32_clip_224", "laion400m_e32", 512, *_CLIP),
)


class _Normalized(nn.Module):
    """Resize to the ViT input size, normalise with the extractor's mean/std, embed."""

    vit: Any  # a timm VisionTransformer

    def __init__(self, spec: Extractor, img_size: int, pretrained: bool) -> None:
        super().__init__()
        import timm

        name = f"{spec.arch}.{spec.tag}" if pretrained else spec.arch
        self.vit = timm.create_model(name, pretrained=pretrained, num_classes=spec.num_classes, img_size=img_size)
        self.img_size = img_size
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bilinear",
                              align_corners=False, antialias=True)
        return self.vit((x - self.mean) / self.std)


class DreamSim(IQAModel):
    """FR distance; lower = more similar; range [0, 2] (in practice about [0, 1])."""

    name = "dreamsim"
    mode = Mode.FR
    lower_better = True
    score_range = (0.0, 2.0)

    def __init__(self, *, img_size: int = 224, pretrained_base: bool = False,
                 ensemble: tuple[Extractor, ...] = ENSEMBLE) -> None:
        super().__init__()
        with building(self.name, backbone=pretrained_base):
            exts = [_Normalized(s, img_size, pretrained_base) for s in ensemble]
        self.extractors = nn.ModuleList(exts)
        self.embed_dim = sum(s.num_classes or int(e.vit.num_features) for s, e in zip(ensemble, exts, strict=True))
        for p in self.parameters():
            p.requires_grad_(False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """DreamSim embedding e(x): the concatenated extractor embeddings (B, 1792)."""
        return torch.cat([ext(x) for ext in self.extractors], dim=1)

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        x, ref = self.check_inputs(x, ref)
        assert ref is not None
        e = self.embed(torch.cat([x, ref]))
        b = x.shape[0]
        return torch.cat([e[:b], e[b:]], dim=1)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        ex, er = feats.chunk(2, dim=1)
        return 1 - F.cosine_similarity(ex, er, dim=1, eps=1e-8)


def create_dreamsim(weights: str | Path | None = None, *, img_size: int = 224) -> DreamSim:
    """Build DreamSim with the suite's ``weights`` semantics (see :mod:`.weights`)."""
    kind, path = parse_weights(weights)
    if kind is WeightsKind.PRETRAINED:
        raise WeightsUnavailableError(
            f"DreamSim's fine-tuned weights come with the dreamsim package ({DREAMSIM_URL}), not in this "
            "adapter's format; merge the LoRA weights into a state dict of this adapter and pass "
            "weights=PATH, or use weights='pretrained-base' for the un-tuned timm backbones"
        )
    model = DreamSim(img_size=img_size, pretrained_base=kind is WeightsKind.PRETRAINED_BASE)
    if path is not None:
        load_checkpoint(model, path, what="the DreamSim adapter (extractors.<i>.vit.*)")
    return model
