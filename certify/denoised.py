"""Denoised median smoothing: DMS (Chiang et al. 2020) and DMS-IQA (Shumitskaya et al. 2025).

Both put a denoiser D between the Gaussian noise and the IQA model f and
median-smooth the result (:class:`robustbench_iqa.certify.input_smoothing.MedianSmoothedIQA`):

    S(x) = median_e f(clip(D(clip(x + e)))),  e ~ N(0, sigma^2 I).

The certificate is MS's (Chiang et al. 2020, Thm. 1) for the base function
f o clip o D o clip; it holds for any D.  They differ only in how D was
trained (:mod:`robustbench_iqa.certify.denoiser_training`):

- ``dms``: Gaussian denoising at the defense's sigma (pixel MSE), as in
  Chiang et al.'s denoised smoothing (after Salman et al. 2020).
- ``dms-iqa``: "Stochastic BIQA" (Shumitskaya et al.): pixel MSE plus the
  MSE between the IQA score of the denoised image and the subjective score,
  plus a differentiable rank loss, to keep the defended metric's SRCC/PLCC.

The factories take ``denoiser=PATH`` (a checkpoint of
:func:`robustbench_iqa.certify.denoiser.save_denoiser`) or a module, and otherwise look for
shipped weights ``robustbench_iqa/weights/denoiser-{loss}-{model}-sigma{sigma}.safetensors``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from torch import nn

from robustbench_iqa.certify.defense import register_defense
from robustbench_iqa.certify.denoiser import load_denoiser
from robustbench_iqa.certify.input_smoothing import MedianSmoothedIQA, median_preflight
from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import IQAModel
from robustbench_iqa.validation import check_sigma


class DenoisedSmoothedIQA(MedianSmoothedIQA):
    """DMS / DMS-IQA: median smoothing with a denoiser in front of the model."""

    def __init__(self, model: IQAModel, *, sigma: float, denoiser: nn.Module, loss: str = "dms",
                 batch_size: int = 64, clip: bool = True, name: str | None = None) -> None:
        if loss not in ("dms", "dms-iqa"):
            raise InputError(f"loss must be 'dms' or 'dms-iqa', got {loss!r}")
        super().__init__(model, sigma=sigma, denoiser=denoiser.eval(), batch_size=batch_size, clip=clip, name=name)
        self.defense_name = self.kind = loss
        self.name = name or f"{loss}({model.name})"
        for p in self.denoiser.parameters():  # type: ignore[union-attr]
            p.requires_grad_(False)


def shipped_denoiser(loss: str, model: str, sigma: float) -> Path | None:
    """Path of the denoiser shipped for ``model`` at ``sigma`` trained with ``loss``, if any."""
    ref = resources.files("robustbench_iqa") / "weights" / f"denoiser-{loss}-{model}-sigma{float(sigma):g}.safetensors"
    path = Path(str(ref))
    return path if path.is_file() else None


def _create(loss: str, model: IQAModel, sigma: float, denoiser: str | Path | nn.Module | None,
            batch_size: int, clip: bool) -> DenoisedSmoothedIQA:
    sigma = check_sigma(sigma)
    if isinstance(denoiser, nn.Module):
        return DenoisedSmoothedIQA(model, sigma=sigma, denoiser=denoiser.to(model.device), loss=loss,
                                   batch_size=batch_size, clip=clip)
    path = Path(denoiser) if denoiser is not None else shipped_denoiser(loss, model.name, sigma)
    if path is None:
        raise InputError(
            f"no trained {loss} denoiser for model {model.name!r} at sigma={sigma:g}; train one with "
            f"`robustbench-iqa train-denoiser --model {model.name} --sigma {sigma:g} --loss {loss} --out DEN.safetensors` "
            f"and pass --checkpoint DEN.safetensors"
        )
    den, info = load_denoiser(path, device=model.device)
    if abs(info["sigma"] - sigma) > 1e-9:
        raise InputError(f"denoiser {path} was trained at sigma={info['sigma']:g}, not at the requested sigma={sigma:g}")
    if info["loss"] != loss:
        raise InputError(f"denoiser {path} was trained with loss {info['loss']!r}; defense {loss!r} needs loss {loss!r}")
    if loss == "dms-iqa" and info["model"] != model.name:
        raise InputError(f"denoiser {path} was trained for model {info['model']!r}, not for {model.name!r}")
    defense = DenoisedSmoothedIQA(model, sigma=sigma, denoiser=den, loss=loss, batch_size=batch_size, clip=clip)
    defense.artifact = path
    return defense


@register_defense("dms", space="input", statistic="median", artifact="denoiser", preflight=median_preflight,
                  description="DMS: median smoothing with a Gaussian denoiser (Chiang et al. 2020)")
def create_dms(model: IQAModel, *, sigma: float, denoiser: str | Path | nn.Module | None = None,
               batch_size: int = 64, clip: bool = True) -> DenoisedSmoothedIQA:
    """DMS around ``model`` with a Gaussian denoiser trained at ``sigma``."""
    return _create("dms", model, sigma, denoiser, batch_size, clip)


@register_defense("dms-iqa", space="input", statistic="median", artifact="denoiser", preflight=median_preflight,
                  description="DMS-IQA: median smoothing with a denoiser trained by an IQA loss (Shumitskaya et al. 2025)")
def create_dms_iqa(model: IQAModel, *, sigma: float, denoiser: str | Path | nn.Module | None = None,
                   batch_size: int = 64, clip: bool = True) -> DenoisedSmoothedIQA:
    """DMS-IQA around ``model`` with a denoiser trained by the composite IQA loss at ``sigma``."""
    return _create("dms-iqa", model, sigma, denoiser, batch_size, clip)
