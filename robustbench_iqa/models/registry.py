"""The registry of IQA models: :func:`list_models`, :func:`create_model`, :func:`model_info`.

Each model registers itself next to its adapter with :func:`register_model`,
declaring its metadata (FR/NR, ``lower_better``, score range), so the metadata
can be read without building the model (``list_models(mode="fr")``).  Names of
the form ``"pyiqa:<metric>"`` are resolved by the prefix factory registered with
:func:`register_prefix`.  A new model is one new module in this package.

Weights are never random by accident (:mod:`robustbench_iqa.models.weights`): a model
registered with ``default_weights="none"`` must be given ``weights``, and a model built with
random learned parameters although no weights were named is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import IQAModel, Mode
from robustbench_iqa.models.weights import (
    DefaultWeights,
    WeightsRequiredError,
    weights_choices,
    weights_origin,
)
from robustbench_iqa.registry import Registry

MODELS: Registry[IQAModel] = Registry("model", package="robustbench_iqa.models")
"""Every registered model; factories are ``factory(*, weights, device, **options) -> IQAModel``."""

F = TypeVar("F", bound=Callable[..., IQAModel])


@dataclass(frozen=True)
class ModelInfo:
    """What is known of a registered model without building it."""

    name: str
    mode: Mode
    lower_better: bool
    score_range: tuple[float, float]
    description: str
    default_weights: DefaultWeights = DefaultWeights.LOCAL


def register_model(name: str, *, mode: Mode | str, lower_better: bool, score_range: tuple[float, float],
                   description: str = "", default_weights: DefaultWeights | str = DefaultWeights.LOCAL
                   ) -> Callable[[F], F]:
    """Decorator registering ``factory(*, weights, device, ...)`` under ``name`` with its metadata.

    ``default_weights``: ``"local"`` (default) when ``weights=None`` builds the model with real
    weights read from this machine (shipped files, a package's installed weights); ``"none"`` for
    a published architecture whose real weights must be named (``create_model`` then refuses
    ``weights=None``).
    """
    return MODELS.register(name, description=description, mode=Mode(mode).value,
                           lower_better=bool(lower_better),
                           score_range=(float(score_range[0]), float(score_range[1])),
                           default_weights=DefaultWeights(default_weights).value)


def register_prefix(prefix: str, *, description: str = "") -> Callable[[F], F]:
    """Decorator registering ``factory(sub_name, *, weights, device)`` for ``"prefix:sub_name"``."""
    return MODELS.register_prefix(prefix, description=description)


def list_models(*, mode: Mode | str | None = None) -> list[str]:
    """Names accepted by :func:`create_model` (prefix families shown as ``prefix:<name>``).

    ``mode="nr"`` or ``"fr"`` keeps the registered models of that mode (prefix families,
    whose mode is known only once built, are then left out).
    """
    if mode is not None:
        return MODELS.names(mode=Mode(mode).value)
    return MODELS.names() + [f"{p}:<name>" for p in MODELS.prefixes()]


def model_info(name: str) -> ModelInfo:
    """The registered metadata of ``name`` (no model is built)."""
    meta = MODELS.metadata(name)
    if not meta:
        raise InputError(f"{name!r} is resolved by a prefix factory; its metadata is known once it is built")
    return ModelInfo(name, Mode(meta["mode"]), bool(meta["lower_better"]), tuple(meta["score_range"]),
                     MODELS.describe(name), DefaultWeights(meta.get("default_weights", DefaultWeights.LOCAL)))


def describe_model(name: str) -> str:
    return MODELS.describe(name)


def create_model(
    name: str,
    *,
    weights: str | Path | None = None,
    device: torch.device | str | None = None,
    **options: Any,
) -> IQAModel:
    """Build the registered model ``name`` in eval mode on ``device``.

    ``weights``: ``None`` for the model's real local default (the embedded models' shipped
    weights, weights installed with a package); ``"pretrained"`` (the published weights),
    a local checkpoint path, or ``"random"`` (random initialisation, without any download).
    A published architecture (registered ``default_weights="none"``) given ``weights=None``
    raises :class:`~robustbench_iqa.models.weights.WeightsRequiredError` naming these choices,
    as does any model whose factory returns random learned parameters for ``weights=None``
    (e.g. ``pyiqa:lpips``).  The built model's ``weights_origin`` says which it got.
    ``options``: the model's own settings (e.g. an evaluation protocol); a keyword
    the model does not take raises :class:`InputError`.  A device this machine
    lacks (``"cuda"`` without a GPU, ``"meta"``, a typo) raises :class:`InputError`.
    """
    from robustbench_iqa.validation import check_device

    dev = check_device(device if device is not None else "cpu")
    meta = MODELS.metadata(name)
    if weights is None and meta.get("default_weights") == DefaultWeights.NONE.value:
        raise WeightsRequiredError(weights_choices(name))
    model = MODELS.create(name, weights=weights, device=dev, **options)
    model.weights_origin = weights_origin(model, weights)
    if weights is None and model.weights_origin.is_random:
        raise WeightsRequiredError(weights_choices(name))
    if meta and (model.mode.value, bool(model.lower_better)) != (meta["mode"], meta["lower_better"]):
        raise AssertionError(f"model {name!r} was registered as {meta} but built as "
                             f"mode={model.mode.value}, lower_better={model.lower_better}")
    return model.to(dev).eval()
