"""The DnCNN denoiser of denoised median smoothing (DMS, DMS-IQA), and its checkpoints.

Zhang et al. 2017, "Beyond a Gaussian Denoiser: Residual Learning of Deep CNN
for Image Denoising" (DnCNN): ``depth`` 3x3 convolutions of ``width``
channels -- Conv+ReLU, (depth - 2) x Conv+BN+ReLU, Conv -- predicting the
noise residual, so that D(y) = y - R(y).  The paper's configuration is
depth 17, width 64; tests and quick CPU runs use tiny ones (e.g. 5 x 32).
The last convolution starts at zero, so an untrained denoiser is the
identity and DMS with it equals MS.

Checkpoints are safetensors files (no pickle) with the architecture, the
noise level, the training loss and its weights in the JSON metadata.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from robustbench_iqa.certify.checkpoint_io import read_checkpoint
from robustbench_iqa.errors import InputError

CHECKPOINT_FORMAT = "robustbench_iqa.denoiser/1"


class DnCNN(nn.Module):
    """D(y) = y - R(y), R a plain CNN of ``depth`` conv layers (Zhang et al. 2017)."""

    def __init__(self, *, channels: int = 3, depth: int = 17, width: int = 64, batch_norm: bool = True) -> None:
        super().__init__()
        if depth < 2:
            raise InputError(f"DnCNN depth must be >= 2, got {depth}")
        if width < 1 or channels < 1:
            raise InputError(f"DnCNN width and channels must be >= 1, got width={width}, channels={channels}")
        self.channels, self.depth, self.width, self.batch_norm = int(channels), int(depth), int(width), bool(batch_norm)
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers.append(nn.Conv2d(width, width, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
        last = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)  # type: ignore[arg-type]
        layers.append(last)
        self.residual = nn.Sequential(*layers)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y - self.residual(y)

    def config(self) -> dict[str, Any]:
        return {"channels": self.channels, "depth": self.depth, "width": self.width, "batch_norm": self.batch_norm}

    def reset_parameters(self, generator: torch.Generator) -> DnCNN:
        """Kaiming-uniform initialization drawn from ``generator`` (last layer stays zero)."""
        convs = [m for m in self.residual if isinstance(m, nn.Conv2d)]
        with torch.no_grad():
            for conv in convs[:-1]:
                fan_in = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
                bound = (6.0 / fan_in) ** 0.5
                w = (torch.rand(conv.weight.shape, generator=generator) * 2 - 1) * bound
                conv.weight.copy_(w.to(conv.weight.device))
                if conv.bias is not None:
                    conv.bias.zero_()
        return self


def save_denoiser(path: str | Path, denoiser: DnCNN, *, sigma: float, loss: str, model: str,
                  extra: dict[str, Any] | None = None) -> Path:
    """Write ``denoiser`` and its configuration (``extra``: loss weights, report...) to safetensors."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in denoiser.state_dict().items()}
    meta = {
        "format": CHECKPOINT_FORMAT,
        "config": json.dumps(denoiser.config()),
        "sigma": repr(float(sigma)),
        "loss": loss,
        "model": model,
        "extra": json.dumps(extra or {}),
    }
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(p), metadata=meta)
    return p


def load_denoiser(path: str | Path, *, device: torch.device | str | None = None) -> tuple[DnCNN, dict[str, Any]]:
    """Read a checkpoint of :func:`save_denoiser`: the module (eval mode) and its metadata."""
    p = Path(path)
    tensors, meta = read_checkpoint(p, fmt=CHECKPOINT_FORMAT, what="denoiser checkpoint")
    den = DnCNN(**json.loads(meta["config"]))
    try:
        den.load_state_dict(tensors)
    except RuntimeError as exc:
        raise InputError(f"denoiser checkpoint {p} does not match its configuration: {exc}") from None
    info = {
        "sigma": float(meta["sigma"]),
        "loss": meta.get("loss", ""),
        "model": meta.get("model", ""),
        "config": json.loads(meta["config"]),
        "extra": json.loads(meta.get("extra", "{}")),
        "path": str(p),
    }
    if device is not None:
        den = den.to(device)
    return den.eval(), info
