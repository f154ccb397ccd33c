"""What every study job of a run needs: the model, the defense, the images, the seeds.

The randomness of a run is derived, never global: each (study, model, defense,
image, ...) gets its own seed from the run's seed by a stable hash
(:func:`derived_seed`), so a resumed run draws exactly the noise an
uninterrupted one would have drawn for the rows it still has to write.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from robustbench_iqa.certify.defense import CertifiedDefense, create_defense
from robustbench_iqa.certify.denoised import shipped_denoiser
from robustbench_iqa.certify.fs_iqa import shipped_checkpoint
from robustbench_iqa.certify.result import Guarantee
from robustbench_iqa.data import IQADataset, create_dataset
from robustbench_iqa.data.images import parse_size
from robustbench_iqa.errors import InputError
from robustbench_iqa.models import IQAModel, create_model
from robustbench_iqa.models.embedded import shipped_weights
from robustbench_iqa.runner.config import VerifyConfig
from robustbench_iqa.store import file_sha256


def derived_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from the run seed and the identity of one unit of work (CRC-32 based, stable)."""
    text = "\x1f".join(str(p) for p in (seed, *parts))
    hi = zlib.crc32(text.encode())
    lo = zlib.crc32(text[::-1].encode())
    return ((hi << 31) ^ lo) & ((1 << 63) - 1)


def generator(cfg: VerifyConfig, *parts: object) -> torch.Generator:
    """A fresh ``torch.Generator`` on ``cfg.device``, seeded from the run seed, sigma and ``parts``."""
    return torch.Generator(device=cfg.device).manual_seed(derived_seed(cfg.seed, cfg.sigma_value, *parts))


@dataclass(frozen=True)
class Image:
    """One input of a run: its name, the distorted image, its reference (FR) and label."""

    name: str
    x: torch.Tensor
    ref: torch.Tensor | None
    target: float


def open_dataset(cfg: VerifyConfig) -> IQADataset:
    """The configured dataset at its working size and resize policy."""
    return create_dataset(cfg.dataset, root=cfg.root, size=parse_size(cfg.size), resize=cfg.resize)


def dataset_settings(cfg: VerifyConfig) -> dict[str, Any]:
    """What the run records of its data: name, size of the whole set, working size and policy."""
    ds = open_dataset(cfg)
    return {"name": ds.name, "samples": len(ds), "size": list(ds.size) if ds.size else None,
            "resize": str(ds.resize.value), "higher_better": ds.higher_better}


def load_images(cfg: VerifyConfig, model: IQAModel) -> list[Image]:
    """The first ``cfg.limit`` images of the configured split (seeded 80/20 split, seed 0)."""
    ds = open_dataset(cfg)
    if model.full_reference and not ds.has_references:
        raise InputError(f"model {model.name!r} is full-reference but dataset {ds.name!r} has no references")
    if cfg.split != "all":
        if cfg.split not in ("train", "test"):
            raise InputError(f"verify: split must be train, test or all, got {cfg.split!r}")
        train, test = ds.split(seed=0)
        ds = train if cfg.split == "train" else test
    ds = ds.head(cfg.limit)
    out = []
    dev = model.device
    for i, s in enumerate(ds.samples):
        x, ref = ds.load(i)
        out.append(Image(s.name, x[None].to(dev), ref[None].to(dev) if (model.full_reference and ref is not None)
                         else None, float(s.score)))
    return out


def build_model(cfg: VerifyConfig, name: str) -> IQAModel:
    return create_model(name, weights=cfg.weights.get(name), device=cfg.device)


def checkpoint_for(cfg: VerifyConfig, model: str, defense: str) -> str | None:
    """The configured checkpoint of ``defense`` on ``model`` at this sigma, if any.

    Keys of ``checkpoints``, most specific first: ``"model:defense@sigma"``,
    ``"model:defense"``, and for FS-IQA heads also ``"model@sigma"`` and ``"model"``.
    """
    s = f"@{cfg.sigma_value:g}"
    keys = [f"{model}:{defense}{s}", f"{model}:{defense}"]
    if defense == "fs-iqa":
        keys += [f"{model}{s}", model]
    return next((cfg.checkpoints[k] for k in keys if k in cfg.checkpoints), None)


def build_defense(cfg: VerifyConfig, model: IQAModel, name: str) -> CertifiedDefense:
    options: dict[str, Any] = {}
    path = checkpoint_for(cfg, model.name, name)
    if path is not None:
        options["checkpoint" if name == "fs-iqa" else "denoiser"] = path
    try:
        return create_defense(name, model, sigma=cfg.sigma_value, **options)
    except InputError as exc:
        if path is not None or name not in ("fs-iqa", "dms", "dms-iqa"):
            raise
        key = f"{model.name}@{cfg.sigma_value:g}" if name == "fs-iqa" else f"{model.name}:{name}@{cfg.sigma_value:g}"
        raise InputError(f"{exc}; in the verify config: checkpoints = {{ \"{key}\" = \"PATH\" }}") from None


def check_checkpoint_keys(cfg: VerifyConfig) -> None:
    """Every key of ``checkpoints`` and ``weights`` must name a configured model (and defense, sigma)."""
    sig = {f"{s:g}" for s in cfg.sigmas()}
    for key in cfg.checkpoints:
        head, _, s = key.partition("@")
        model, _, defense = head.partition(":")
        ok = model in cfg.models and (not s or s in sig) and (defense in cfg.defenses if defense else
                                                              "fs-iqa" in cfg.defenses)
        if not ok:
            raise InputError(f"verify: checkpoints key {key!r} matches no configured model"
                             f"{'' if not defense else ':defense'}{'' if not s else '@sigma'} "
                             f"(models {list(cfg.models)}, defenses {list(cfg.defenses)}, sigma {sorted(sig)})")
    for key in cfg.weights:
        if key not in cfg.models:
            raise InputError(f"verify: weights key {key!r} is not one of the models {list(cfg.models)}")


def certify_options(cfg: VerifyConfig, defense_name: str) -> dict[str, Any]:
    """Keyword arguments of ``certify``: FS-IQA's tau, or the input radius of the others."""
    if defense_name == "fs-iqa":
        return {"tau": cfg.tau}
    return {"eps": cfg.eps if cfg.eps is not None else cfg.sigma_value / 2}


def auditable(guarantee: Guarantee | str) -> bool:
    """Bounds on the smoothed output itself can be audited at attacked points."""
    return Guarantee(guarantee) in (Guarantee.PERCENTILE_BOUNDS, Guarantee.MEAN_BOUNDS)


def weights_identity(cfg: VerifyConfig, name: str) -> str:
    """SHA-256 of the weights a model is built from (local file or shipped), else how it was built."""
    path = cfg.weights.get(name)
    if path in ("pretrained", "pretrained-base"):
        return f"{path} (published weights through pyiqa/timm/torchvision)"
    if path is not None:
        return file_sha256(path)
    p = shipped_weights(name)
    if p.is_file():
        return file_sha256(p)
    return "default (pretrained or random init; see the model adapter)"


def checkpoint_identity(cfg: VerifyConfig, model: str, defense: str) -> str | None:
    """SHA-256 of the trained part of ``defense`` on ``model`` at this sigma (FS-IQA heads or a
    denoiser, configured or shipped), so that a resumed run cannot mix two of them; None if none."""
    path = checkpoint_for(cfg, model, defense)
    p: Path | None = Path(path) if path is not None else None
    if p is None and defense == "fs-iqa":
        p = shipped_checkpoint(model, cfg.sigma_value)
    elif p is None and defense in ("dms", "dms-iqa"):
        p = shipped_denoiser(defense, model, cfg.sigma_value)
    return file_sha256(p) if p is not None and p.is_file() else None


def chunks(items: list[Image], size: int) -> Iterator[list[Image]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]
