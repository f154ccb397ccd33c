"""A learned adversarial purifier in front of the IQA model (empirical, no certificate).

Adversarial purification by denoising (after Liao et al. 2018, "Defense against Adversarial
Attacks Using High-Level Representation Guided Denoiser", and the purification defenses of
Gushchin et al. 2024): a DnCNN P (Zhang et al. 2017; :class:`robustbench_iqa.certify.denoiser.DnCNN`)
is trained to map I-FGSM adversarial examples of the embedded models back to their clean
images (:mod:`robustbench_iqa.certify.purifier_training`), and the defended score is

    S(x) = f(clip(P(x), 0, 1))    (NR),      S(x, ref) = f(clip(P(x)), clip(P(ref)))    (FR).

P is differentiable, so the adaptive attack differentiates through it (``gradient="exact"``,
the default: the white-box attack on the whole pipeline, Athalye et al. 2018); ``"bpda"``
treats P as the identity in the backward pass.  Deterministic like the fixed transforms
(:mod:`robustbench_iqa.certify.purification`): ``sigma`` is 0, ``noisy_scores(n)`` repeats the
one score n times (one forward pass), ``predict`` returns it.

The factory takes ``denoiser=PATH`` (a checkpoint of :func:`robustbench_iqa.certify.denoiser.save_denoiser`
with loss ``"purifier"``) or a module; otherwise the shipped
``robustbench_iqa/weights/purifier-default.safetensors`` (``scripts/train_purifier.py``;
settings and held-out numbers in ``purifier-training.json``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_iqa.certify.defense import register_defense
from robustbench_iqa.certify.denoiser import load_denoiser
from robustbench_iqa.certify.purification import Gradient, PurifiedIQA, check_no_noise
from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import IQAModel

LOSS = "purifier"
"""The ``loss`` a purifier checkpoint records (a DMS denoiser records ``dms`` and is refused)."""
SHIPPED_NAME = "purifier-default.safetensors"


def shipped_purifier() -> Path | None:
    """Path of the shipped purifier of the embedded default models, if present."""
    path = Path(str(resources.files("robustbench_iqa") / "weights" / SHIPPED_NAME))
    return path if path.is_file() else None


class PurifierIQA(PurifiedIQA):
    """S(x) = f(clip(P(x), 0, 1)) for a trained purifier P (see the module doc)."""

    defense_name = "purifier"

    def __init__(self, model: IQAModel, *, purifier: nn.Module, gradient: Gradient | str | None = None,
                 batch_size: int = 64) -> None:
        super().__init__(model, gradient=gradient, batch_size=batch_size)
        self.purifier = purifier.eval()
        for p in self.purifier.parameters():
            p.requires_grad_(False)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return self.purifier(x).clamp(0.0, 1.0)

    def settings(self) -> dict[str, Any]:
        cfg = getattr(self.purifier, "config", None)
        return {"purifier": cfg() if callable(cfg) else type(self.purifier).__name__}


@register_defense("purifier", space="input", statistic="mean", artifact="denoiser", certified=False, noise=False,
                  randomized=False,
                  description="empirical: DnCNN purifier trained on I-FGSM examples of the embedded models")
def create_purifier(model: IQAModel, *, sigma: float = 0.0, denoiser: str | Path | nn.Module | None = None,
                    gradient: str = "exact", batch_size: int = 64) -> PurifierIQA:
    """The learned purifier in front of ``model`` (``denoiser``: its checkpoint or module; default: shipped)."""
    check_no_noise(sigma, defense="purifier")
    if isinstance(denoiser, nn.Module):
        return PurifierIQA(model, purifier=denoiser.to(model.device), gradient=gradient, batch_size=batch_size)
    path = Path(denoiser) if denoiser is not None else shipped_purifier()
    if path is None:
        raise InputError("no trained purifier found; train one with `python scripts/train_purifier.py --out DIR` "
                         "and pass --checkpoint DIR/purifier-default.safetensors")
    net, info = load_denoiser(path, device=model.device)
    if info["loss"] != LOSS:
        raise InputError(f"checkpoint {path} is a {info['loss']!r} denoiser, not a purifier "
                         f"(train one with scripts/train_purifier.py)")
    defense = PurifierIQA(model, purifier=net, gradient=gradient, batch_size=batch_size)
    defense.artifact = path
    return defense
