"""The one interface every IQA model of the suite meets.

An IQA model is split into a *backbone* (``features``) and a *head* (``head``):
``forward(x, ref) = head(features(x, ref))``.  The backbone output is what
FS-IQA's Feature Transform Normalize module consumes (Shumitskaya et al.,
"FS-IQA", Sec. "Feature Preparation Pipeline": ``f_init = b(x)``).

Metadata follows pyiqa's ``default_model_configs``: whether the model is
full-reference (FR) or no-reference (NR), whether a lower score means better
quality, and the nominal score range.  Attacks read ``lower_better`` so that
"raise quality" means the right thing for every metric.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustbench_iqa.errors import BoundUnavailableError
from robustbench_iqa.lipschitz.composition import LipschitzBound
from robustbench_iqa.mode import Mode as Mode
from robustbench_iqa.validation import check_image_size, check_pair, min_image_size


class IQAModel(nn.Module):
    """Base class of all IQA model adapters.

    Subclasses set ``mode``, ``lower_better``, ``score_range`` and implement
    :meth:`features` and :meth:`head`.  Inputs are RGB batches in [0, 1] of
    shape (B, 3, H, W); for FR models ``ref`` has the same shape and is never
    perturbed by the suite.
    """

    name: str = "iqa-model"
    mode: Mode = Mode.NR
    lower_better: bool = False
    score_range: tuple[float, float] = (0.0, 1.0)
    weights_source: Any = None
    """A :class:`~robustbench_iqa.models.weights.WeightsSource` for the published models (what
    their weights were read from, with SHA-256), None otherwise."""
    weights_origin: Any = "unknown"
    """A :class:`~robustbench_iqa.models.weights.WeightsOrigin` (local, pretrained, file, random,
    ...), set by :func:`~robustbench_iqa.models.registry.create_model`; shown next to scores."""

    @property
    def full_reference(self) -> bool:
        return self.mode is Mode.FR

    @property
    def protocol(self) -> dict[str, Any]:
        """The model's evaluation protocol (input resize, crops, ...), JSON-serialisable.

        Every setting that changes the score of an image, beyond the weights, is listed here
        with its value, so that a run can record it.  The keys are the keyword options of
        the model's factory (``create_model(name, **protocol)`` rebuilds the same protocol).
        Models without options return ``{}``.
        """
        return {}

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """Backbone output b(x) (or b(x, ref) for FR), flattened to shape (B, D)."""
        raise NotImplementedError

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        """The model's own (undefended) head: features (B, D) -> scores (B,)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """Undefended quality score of shape (B,)."""
        return self.head(self.features(x, ref))

    def __call__(self, x: Any, ref: Any = None, *args: Any, **kwargs: Any) -> Any:
        """The score of ``x`` (and ``ref``), like pyiqa: image file paths, PIL images or lists of them
        (:mod:`robustbench_iqa.models.inputs`) are decoded, moved to the model's device and pass the
        range check of :func:`~robustbench_iqa.validation.check_pair` (values within
        :data:`~robustbench_iqa.validation.RANGE_TOLERANCE` of [0, 1] clamped, others refused);
        anything else that is not a tensor is one :class:`InputError`.  Tensors are scored as
        given, because defenses and attacks score noisy or look-ahead copies of images they
        checked; :meth:`check_inputs` is the check every entry point (CLI, defenses, attacks)
        applies to them."""
        from robustbench_iqa.models.inputs import as_images

        if not isinstance(x, torch.Tensor) or (ref is not None and not isinstance(ref, torch.Tensor)):
            x = as_images(x, name="x", device=self.device)
            ref = as_images(ref, name="ref", device=self.device)
            x, ref = self.check_inputs(x, ref)
        return super().__call__(x, ref, *args, **kwargs)

    def check_inputs(
        self, x: torch.Tensor, ref: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Validate shapes, ranges and the FR/NR pairing; see :mod:`robustbench_iqa.validation`."""
        x, ref = check_pair(x, ref, full_reference=self.full_reference)
        check_image_size(x.shape, minimum=min_image_size(self), what="x", model=getattr(self, "name", None))
        return x, ref

    def lipschitz_bound(self, input_size: tuple[int, int] | None) -> LipschitzBound:
        """A certified upper bound of the Lipschitz constant (L2 -> L2) of :meth:`features` in ``x``
        (``ref`` fixed) on images of spatial size ``input_size`` (H, W).

        Models that know their structure override this (see
        :mod:`robustbench_iqa.lipschitz.composition`); the default has none.
        """
        raise BoundUnavailableError(f"no certified Lipschitz bound is implemented for model {self.name!r}")

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")


class Backbone(nn.Module):
    """The backbone b of an :class:`IQAModel` as a module ``(x, ref=None) -> (B, D)``.

    This is what :class:`certify.FeatureSmoothedIQA` takes as ``backbone``.
    Its parameters are frozen (FS-IQA, Sec. "Training and application").
    """

    def __init__(self, model: IQAModel) -> None:
        super().__init__()
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)

    @property
    def mode(self) -> Mode:
        return self.model.mode

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.features(x, ref)

    def lipschitz_bound(self, input_size: tuple[int, int] | None) -> LipschitzBound:
        """The model's certified Lipschitz bound of b (see :meth:`IQAModel.lipschitz_bound`)."""
        return self.model.lipschitz_bound(input_size)
