"""What the benchmark measures on: a model, its FS-IQA wrapper and one input.

A *subject* is built from a picklable :class:`SubjectSpec`, so that the memory
subprocesses (:mod:`robustbench_iqa.bench.memory`) rebuild exactly the same
one.  The FS-IQA heads are untrained ``FTN(D, 512)`` + ``Scorer()`` (speed does
not depend on trained weights).  When the embedded defaults have no shipped
weights yet, a *stand-in* of the same architecture with random weights is
used and the result says so.  Published architectures (``dbcnn``, ``lpips``)
come with random weights (no download) when they are registered.

The input is the ``astronaut`` image of scikit-image (offline), resized to the
requested size; FR models get it as the reference and a noisy copy as ``x``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from robustbench_iqa.certify.fs_iqa import FeatureSmoothedIQA
from robustbench_iqa.certify.heads import FTN, Scorer
from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import Backbone, IQAModel
from robustbench_iqa.models.registry import create_model, list_models
from robustbench_iqa.models.weights import WeightsRequiredError


class ModelUnavailable(InputError):
    """The model is not registered (yet) in this installation."""


@dataclass(frozen=True)
class SubjectSpec:
    """Model name, input size (H, W), device, seed of weights/input and FS-IQA sigma."""

    model: str
    size: tuple[int, int] = (384, 512)
    device: str = "cpu"
    seed: int = 0
    sigma: float = 0.25


@dataclass
class Subject:
    spec: SubjectSpec
    model: IQAModel
    fs: FeatureSmoothedIQA
    x: torch.Tensor
    ref: torch.Tensor | None
    feature_dim: int
    note: str = ""

    @property
    def device(self) -> torch.device:
        return torch.device(self.spec.device)


def _stand_in(name: str) -> IQAModel | None:
    from robustbench_iqa.models import embedded

    cls = {"default-nr": embedded.EmbeddedNR, "default-fr": embedded.EmbeddedFR}.get(name)
    return None if cls is None else cls()


def load_model(name: str, *, device: str, seed: int) -> tuple[IQAModel, str]:
    """``create_model(name)``, or the random-weight stand-in of an embedded default without weights."""
    known = list_models()
    if name not in known and not (":" in name and f"{name.split(':', 1)[0]}:<name>" in known):
        raise ModelUnavailable(f"model {name!r} is not registered in this installation")
    # Random initializations draw from the global RNG: fork it so the caller's state is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return create_model(name, device=device), ""
        except WeightsRequiredError:  # a published architecture: timing needs no trained weights
            return create_model(name, device=device, weights="random"), "random weights (timing only)"
        except InputError as exc:
            model = _stand_in(name)
            if model is None:
                raise
            note = f"stand-in: {type(model).__name__} with random weights ({exc})"
            return model.to(device).eval(), note


def bench_image(size: tuple[int, int], *, seed: int = 0) -> torch.Tensor:
    """A natural test image (3, H, W) in [0, 1]: scikit-image's astronaut, resized (random if absent)."""
    try:
        from skimage import data

        img = torch.from_numpy(data.astronaut().copy()).permute(2, 0, 1).float() / 255.0
    except (ImportError, OSError):
        img = torch.rand(3, 512, 512, generator=torch.Generator().manual_seed(seed))
    out = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=True)
    return out[0].clamp(0.0, 1.0)


def build_subject(spec: SubjectSpec) -> Subject:
    """The model, FS-IQA with untrained heads, and the input of ``spec``."""
    model, note = load_model(spec.model, device=spec.device, seed=spec.seed)
    ref_img = bench_image(spec.size, seed=spec.seed)[None].to(spec.device)
    if model.full_reference:
        g = torch.Generator().manual_seed(spec.seed + 1)
        noise = 0.05 * torch.randn(ref_img.shape, generator=g).to(spec.device)
        x, ref = (ref_img + noise).clamp(0.0, 1.0), ref_img
    else:
        x, ref = ref_img, None
    with torch.no_grad():
        feature_dim = int(model.features(x, ref).shape[1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        ftn, scorer = FTN(feature_dim, 512), Scorer()
    fs = FeatureSmoothedIQA(
        Backbone(model), ftn.to(spec.device), scorer.to(spec.device), sigma=spec.sigma, mode=model.mode,
        name=f"fs-iqa({spec.model})",
    )
    return Subject(spec=spec, model=model, fs=fs, x=x, ref=ref, feature_dim=feature_dim, note=note)
