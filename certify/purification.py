"""Empirical input-purification defenses: a fixed image transform T in front of the IQA model.

The defended score is ``S(x) = f(T(x))`` for an NR model and ``S(x, ref) = f(T(x), T(ref))``
for an FR model: the reference goes through the same transform, so an undistorted pair stays
identical after it (x = ref gives T(x) = T(ref)) and the metric compares like with like.  Only
``x`` is attacked; no gradient flows to the reference.  These defenses have **no certificate**:
they are the empirical baselines that the IQA defense benchmarks report next to certified ones
(Gushchin et al. 2024, "Guardians of Image Quality", purification defenses; defaults below
are that benchmark's code defaults unless another source is named):

==================  =========================================================  ====================
name                transform T                                                default settings
==================  =========================================================  ====================
``jpeg``            JPEG encode + decode in memory (Pillow's libjpeg; 8-bit    quality 50
                    RGB, 4:2:0 chroma) (Das et al. 2017; Guo et al. 2018)
``bit-depth``       round(x (2^b - 1)) / (2^b - 1) per channel                 4 bits (16 levels)
                    (Xu et al. 2018, "Feature Squeezing")
``median``          k x k median filter per channel, reflect padding           k = 3
                    (Xu et al. 2018)
``gaussian-blur``   k x k Gaussian filter per channel, reflect padding,        k = 3, std = 0.8
                    std 0.3 ((k - 1)/2 - 1) + 0.8 unless given (OpenCV's rule)
``resize``          bilinear (antialiased) down by ``factor``, bilinear up     factor 0.5
                    back to H x W
==================  =========================================================  ====================

**The gradient an adaptive attack gets** (``gradient=``, :class:`Gradient`):

* ``"exact"``: autograd through the implementation.  Blur and resize are linear, the median
  filter is piecewise linear (the gradient reaches the selected pixel): their true gradient.
  Bit-depth reduction and JPEG are piecewise constant in x (rounding; JPEG quantizes the
  image to 8 bits and its DCT coefficients), so their exact gradient is zero almost
  everywhere: a plain gradient attack is stopped by *gradient masking*, not by robustness,
  and the attack-strength checks flag it (``zero-gradient``, ``no-progress``).
* ``"bpda"``: Backward Pass Differentiable Approximation (Athalye et al. 2018, Sec. 4.1):
  the forward pass applies T, the backward pass treats T as the identity
  (``x + (T(x) - x).detach()``, computed as :func:`bpda`), so d S / d x = (grad f)(T(x)).  The default for ``jpeg`` and
  ``bit-depth``; the adaptive attack against them.

**Deterministic.**  ``sigma`` is 0 (the results store keys rows by sigma), ``randomized`` is
False and the generator is ignored.  ``noisy_scores(x, ref, n=n)`` returns the one defended
score repeated: shape (B, n), every column equal, differentiable in x, at the cost of one
forward pass whatever n is; so an EOT objective over it costs one forward/backward pass per
step and its mean is the defended score.  ``predict(x, ref, n=n)`` returns S(x), shape (B,),
also with one forward pass (``n`` is checked, then ignored).
"""

from __future__ import annotations

import io
import math
from enum import StrEnum
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_iqa.certify.defense import DefenseMixin, Statistic, register_defense
from robustbench_iqa.certify.input_smoothing import check_batch_size
from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import IQAModel
from robustbench_iqa.registry import checked_keywords
from robustbench_iqa.validation import check_n, check_pair


class Gradient(StrEnum):
    """Which gradient of the transform an attack differentiates through (see the module doc)."""

    EXACT = "exact"
    BPDA = "bpda"


def as_gradient(value: Gradient | str) -> Gradient:
    try:
        return Gradient(value.lower() if isinstance(value, str) else value)
    except ValueError:
        raise InputError(f"unknown gradient {value!r}; use 'exact' or 'bpda'") from None


def check_no_noise(sigma: float, *, defense: str) -> float:
    """Empirical transforms draw no Gaussian noise: ``sigma`` must be 0."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or float(sigma) != 0.0:
        raise InputError(f"defense {defense!r} draws no noise: sigma must be 0, got {sigma!r}")
    return 0.0


def _check_int(value: int, *, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise InputError(f"{name} must be an integer {span}, got {value!r}")
    return value


def _check_odd_kernel(kernel_size: int) -> int:
    k = _check_int(kernel_size, name="kernel_size", low=3)
    if k % 2 == 0:
        raise InputError(f"kernel_size must be odd, got {k}")
    return k


def bpda(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Forward value ``y``, gradient of the identity (Athalye et al. 2018).

    Written ``y + (x - x.detach())`` rather than ``x + (y - x).detach()``: the same gradient,
    and the forward value is ``y`` bit for bit (``x - x.detach()`` is exactly 0), so the
    attacked score equals the defended prediction.
    """
    return y.detach() + (x - x.detach())


class PurifiedIQA(DefenseMixin, nn.Module):
    """Base of the purification defenses: S(x[, ref]) = f(T(x)[, T(ref)]); see the module doc.

    Subclasses implement :meth:`transform` (T on a batch, differentiable where T is) and
    :meth:`settings` (the keyword-only settings that identify them).
    """

    defense_name = "purification"
    statistic: Statistic = Statistic.MEAN
    eot_aggregate = "mean"
    randomized: ClassVar[bool] = False
    default_gradient: ClassVar[Gradient] = Gradient.EXACT

    def __init__(self, model: IQAModel, *, gradient: Gradient | str | None = None, batch_size: int = 64,
                 name: str | None = None) -> None:
        super().__init__()
        if not isinstance(model, IQAModel):
            raise InputError(f"model must be an IQAModel, got {type(model).__name__}")
        self.model = model
        self.sigma = 0.0
        self.gradient = self.default_gradient if gradient is None else as_gradient(gradient)
        self.batch_size = check_batch_size(batch_size)
        self.mode = model.mode
        self.lower_better = bool(model.lower_better)
        self.score_range = (float(model.score_range[0]), float(model.score_range[1]))
        self.kind = self.defense_name
        self.name = name or f"{self.defense_name}({model.name})"
        self.eval()

    @property
    def full_reference(self) -> bool:
        return self.model.full_reference

    # ------------------------------------------------------------ the transform
    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """T applied to a batch (B, 3, H, W) in [0, 1]; differentiable where T is."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """The transform's settings (what identifies it next to its name)."""
        raise NotImplementedError

    def purify(self, x: torch.Tensor) -> torch.Tensor:
        """T(x) with the gradient of ``self.gradient``: exact (autograd through T) or BPDA (identity)."""
        if self.gradient is Gradient.BPDA:
            with torch.no_grad():
                y = self.transform(x)
            return bpda(x, y)
        return self.transform(x)

    def defended_scores(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """S(x[, ref]) for checked inputs, shape (B,), differentiable in x with the chosen gradient."""
        if ref is not None:
            with torch.no_grad():
                ref = self.transform(ref)
        out = []
        for s in range(0, x.shape[0], self.batch_size):
            r = None if ref is None else ref[s : s + self.batch_size]
            out.append(self.model(self.purify(x[s : s + self.batch_size]), r).reshape(-1))
        return torch.cat(out)

    # ------------------------------------------------------------- interface
    def noisy_scores(
        self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The defended score repeated ``n`` times, shape (B, n); one forward pass (see the module doc)."""
        x, ref = check_pair(x, ref, full_reference=self.full_reference)
        n = check_n(n)
        return self.defended_scores(x, ref)[:, None].repeat(1, n)

    @checked_keywords
    @torch.no_grad()
    def predict(
        self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int = 1,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The defended score S(x[, ref]), shape (B,); deterministic, ``n`` is checked and ignored."""
        x, ref = check_pair(x, ref, full_reference=self.full_reference)
        check_n(n)
        return self.defended_scores(x, ref)

    def identity(self) -> dict[str, Any]:
        return super().identity() | {"settings": self.settings(), "gradient": self.gradient.value}


# ---------------------------------------------------------------------- JPEG
def jpeg_round_trip(x: torch.Tensor, *, quality: int) -> torch.Tensor:
    """JPEG-compress and decompress each image of ``x`` (B, 3, H, W) in [0, 1] at ``quality``.

    The image is quantized to 8 bits (round half to even of 255 x), encoded and decoded in
    memory by Pillow's libjpeg on the CPU (baseline JPEG, 4:2:0 chroma subsampling: Pillow's
    defaults; the same bytes on every device), and returned as floats in [0, 1] on ``x``'s
    device.  No gradient (piecewise constant in x).
    """
    from PIL import Image

    u8 = (x.detach() * 255.0).round().clamp(0, 255).to(device="cpu", dtype=torch.uint8)
    out = []
    for img in u8.permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as decoded:
            out.append(torch.from_numpy(np.asarray(decoded.convert("RGB")).copy()))
    return (torch.stack(out).permute(0, 3, 1, 2).to(dtype=x.dtype) / 255.0).to(x.device)


class JPEGIQA(PurifiedIQA):
    """JPEG re-compression at ``quality`` (1..100) in front of the model; BPDA by default."""

    defense_name = "jpeg"
    default_gradient = Gradient.BPDA

    def __init__(self, model: IQAModel, *, quality: int = 50, gradient: Gradient | str | None = None,
                 batch_size: int = 64) -> None:
        super().__init__(model, gradient=gradient, batch_size=batch_size)
        self.quality = _check_int(quality, name="quality", low=1, high=100)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        # x * 0 keeps the (zero) exact gradient of a piecewise-constant map connected to x.
        return jpeg_round_trip(x, quality=self.quality) + x * 0.0

    def settings(self) -> dict[str, Any]:
        return {"quality": self.quality}


# ----------------------------------------------------------------- bit depth
def reduce_bit_depth(x: torch.Tensor, *, bits: int) -> torch.Tensor:
    """round(x L) / L with L = 2^bits - 1 levels above 0 (torch.round: half to even)."""
    levels = float(2**bits - 1)
    return torch.round(x * levels) / levels


class BitDepthIQA(PurifiedIQA):
    """Bit-depth reduction to ``bits`` (1..8) per channel; BPDA by default."""

    defense_name = "bit-depth"
    default_gradient = Gradient.BPDA

    def __init__(self, model: IQAModel, *, bits: int = 4, gradient: Gradient | str | None = None,
                 batch_size: int = 64) -> None:
        super().__init__(model, gradient=gradient, batch_size=batch_size)
        self.bits = _check_int(bits, name="bits", low=1, high=8)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return reduce_bit_depth(x, bits=self.bits)

    def settings(self) -> dict[str, Any]:
        return {"bits": self.bits}


# -------------------------------------------------------------------- median
def _check_fits(x: torch.Tensor, pad: int, *, what: str) -> None:
    h, w = x.shape[-2:]
    if pad >= h or pad >= w:
        raise InputError(f"{what}: the image ({h}x{w}) is too small for reflect padding of {pad} pixels")


def median_filter(x: torch.Tensor, *, kernel_size: int) -> torch.Tensor:
    """k x k median of each channel with reflect padding (``d c b | a b c d``), k odd."""
    pad = kernel_size // 2
    _check_fits(x, pad, what="median filter")
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    windows = xp.unfold(2, kernel_size, 1).unfold(3, kernel_size, 1)  # (B, C, H, W, k, k)
    return windows.reshape(*x.shape, kernel_size * kernel_size).median(dim=-1).values


class MedianIQA(PurifiedIQA):
    """k x k median filter (k odd) in front of the model; exact (selection) gradient by default."""

    defense_name = "median"

    def __init__(self, model: IQAModel, *, kernel_size: int = 3, gradient: Gradient | str | None = None,
                 batch_size: int = 64) -> None:
        super().__init__(model, gradient=gradient, batch_size=batch_size)
        self.kernel_size = _check_odd_kernel(kernel_size)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return median_filter(x, kernel_size=self.kernel_size)

    def settings(self) -> dict[str, Any]:
        return {"kernel_size": self.kernel_size}


# --------------------------------------------------------------------- blur
def opencv_blur_std(kernel_size: int) -> float:
    """OpenCV's default Gaussian std for a k x k kernel: 0.3 ((k - 1)/2 - 1) + 0.8."""
    return 0.3 * ((kernel_size - 1) * 0.5 - 1.0) + 0.8


def gaussian_blur(x: torch.Tensor, *, kernel_size: int, std: float) -> torch.Tensor:
    """Separable k x k Gaussian filter (weights exp(-t^2 / 2 std^2), normalised), reflect padding."""
    pad = kernel_size // 2
    _check_fits(x, pad, what="Gaussian blur")
    t = torch.arange(kernel_size, dtype=x.dtype, device=x.device) - pad
    w = torch.exp(-0.5 * (t / std) ** 2)
    w = w / w.sum()
    c = x.shape[1]
    xp = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    xp = F.conv2d(xp, w.reshape(1, 1, 1, -1).expand(c, 1, 1, kernel_size), groups=c)
    return F.conv2d(xp, w.reshape(1, 1, -1, 1).expand(c, 1, kernel_size, 1), groups=c)


class GaussianBlurIQA(PurifiedIQA):
    """k x k Gaussian blur in front of the model (std: OpenCV's rule unless ``blur_std``); exact gradient."""

    defense_name = "gaussian-blur"

    def __init__(self, model: IQAModel, *, kernel_size: int = 3, blur_std: float | None = None,
                 gradient: Gradient | str | None = None, batch_size: int = 64) -> None:
        super().__init__(model, gradient=gradient, batch_size=batch_size)
        self.kernel_size = _check_odd_kernel(kernel_size)
        std = opencv_blur_std(self.kernel_size) if blur_std is None else blur_std
        if isinstance(std, bool) or not isinstance(std, (int, float)) or not (math.isfinite(std) and std > 0):
            raise InputError(f"blur_std must be a finite number > 0, got {blur_std!r}")
        self.blur_std = float(std)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return gaussian_blur(x, kernel_size=self.kernel_size, std=self.blur_std)

    def settings(self) -> dict[str, Any]:
        return {"kernel_size": self.kernel_size, "blur_std": self.blur_std}


# ------------------------------------------------------------------- resize
def resize_down_up(x: torch.Tensor, *, factor: float) -> torch.Tensor:
    """Bilinear antialiased resize to (round(H f), round(W f)) (at least 1 x 1), then bilinear back to H x W."""
    h, w = x.shape[-2:]
    small = (max(1, round(h * factor)), max(1, round(w * factor)))
    down = F.interpolate(x, size=small, mode="bilinear", align_corners=False, antialias=True)
    return F.interpolate(down, size=(h, w), mode="bilinear", align_corners=False)


class ResizeIQA(PurifiedIQA):
    """Down-up resizing by ``factor`` in (0, 1) in front of the model; exact gradient."""

    defense_name = "resize"

    def __init__(self, model: IQAModel, *, factor: float = 0.5, gradient: Gradient | str | None = None,
                 batch_size: int = 64) -> None:
        super().__init__(model, gradient=gradient, batch_size=batch_size)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not (0.0 < factor < 1.0):
            raise InputError(f"factor must lie in (0, 1), got {factor!r}")
        self.factor = float(factor)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        return resize_down_up(x, factor=self.factor)

    def settings(self) -> dict[str, Any]:
        return {"factor": self.factor}


# ---------------------------------------------------------------- registry
_EMPIRICAL: dict[str, Any] = {"space": "input", "statistic": "mean", "certified": False, "noise": False, "randomized": False}


@register_defense("jpeg", **_EMPIRICAL,
                  description="empirical: JPEG re-compression (quality 50), BPDA gradient (Das et al. 2017)")
def create_jpeg(model: IQAModel, *, sigma: float = 0.0, quality: int = 50, gradient: str = "bpda",
                batch_size: int = 64) -> JPEGIQA:
    """JPEG re-compression in front of ``model`` (no certificate; ``sigma`` must be 0)."""
    check_no_noise(sigma, defense="jpeg")
    return JPEGIQA(model, quality=quality, gradient=gradient, batch_size=batch_size)


@register_defense("bit-depth", **_EMPIRICAL,
                  description="empirical: bit-depth reduction (4 bits), BPDA gradient (Xu et al. 2018)")
def create_bit_depth(model: IQAModel, *, sigma: float = 0.0, bits: int = 4, gradient: str = "bpda",
                     batch_size: int = 64) -> BitDepthIQA:
    """Bit-depth reduction in front of ``model`` (no certificate; ``sigma`` must be 0)."""
    check_no_noise(sigma, defense="bit-depth")
    return BitDepthIQA(model, bits=bits, gradient=gradient, batch_size=batch_size)


@register_defense("median", **_EMPIRICAL,
                  description="empirical: 3x3 median filter (Xu et al. 2018)")
def create_median(model: IQAModel, *, sigma: float = 0.0, kernel_size: int = 3, gradient: str = "exact",
                  batch_size: int = 64) -> MedianIQA:
    """Median filtering in front of ``model`` (no certificate; ``sigma`` must be 0)."""
    check_no_noise(sigma, defense="median")
    return MedianIQA(model, kernel_size=kernel_size, gradient=gradient, batch_size=batch_size)


@register_defense("gaussian-blur", **_EMPIRICAL,
                  description="empirical: 3x3 Gaussian blur, std 0.8 (Gushchin et al. 2024)")
def create_gaussian_blur(model: IQAModel, *, sigma: float = 0.0, kernel_size: int = 3,
                         blur_std: float | None = None, gradient: str = "exact",
                         batch_size: int = 64) -> GaussianBlurIQA:
    """Gaussian blur in front of ``model`` (no certificate; ``sigma`` must be 0: the blur's is ``blur_std``)."""
    check_no_noise(sigma, defense="gaussian-blur")
    return GaussianBlurIQA(model, kernel_size=kernel_size, blur_std=blur_std, gradient=gradient,
                           batch_size=batch_size)


@register_defense("resize", **_EMPIRICAL,
                  description="empirical: bilinear down-up resizing by 0.5 (Gushchin et al. 2024)")
def create_resize(model: IQAModel, *, sigma: float = 0.0, factor: float = 0.5, gradient: str = "exact",
                  batch_size: int = 64) -> ResizeIQA:
    """Down-up resizing in front of ``model`` (no certificate; ``sigma`` must be 0)."""
    check_no_noise(sigma, defense="resize")
    return ResizeIQA(model, factor=factor, gradient=gradient, batch_size=batch_size)
