"""One registry of IQA models: :func:`list_models` and :func:`create_model`.

Names are registered once with :func:`register_model`.  A name with a prefix
(``"pyiqa:<metric>"``) is resolved by a prefix factory registered with
:func:`register_prefix`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import IQAModel

ModelFactory = Callable[..., IQAModel]
"""``factory(*, weights: str | Path | None, device: torch.device) -> IQAModel``."""

_MODELS: dict[str, ModelFactory] = {}
_PREFIXES: dict[str, Callable[..., IQAModel]] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_model(name: str, description: str = "") -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering ``factory`` under ``name``."""

    def deco(factory: ModelFactory) -> ModelFactory:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = factory
        _DESCRIPTIONS[name] = description
        return factory

    return deco


def register_prefix(prefix: str) -> Callable[[Callable[..., IQAModel]], Callable[..., IQAModel]]:
    """Decorator registering ``factory(sub_name, *, weights, device)`` for ``"prefix:sub_name"``."""

    def deco(factory: Callable[..., IQAModel]) -> Callable[..., IQAModel]:
        _PREFIXES[prefix] = factory
        return factory

    return deco


def _load_builtin() -> None:
    # Importing the adapter modules registers their models.
    import importlib

    for mod in ("embedded", "lipschitz_embedded", "published"):
        try:
            importlib.import_module(f"robustbench_iqa.models.{mod}")
        except ModuleNotFoundError as exc:  # only the module itself may be absent
            if exc.name != f"robustbench_iqa.models.{mod}":
                raise


def list_models() -> list[str]:
    """Names accepted by :func:`create_model` (prefix families shown as ``prefix:<name>``)."""
    _load_builtin()
    return sorted(_MODELS) + [f"{p}:<name>" for p in sorted(_PREFIXES)]


def describe_model(name: str) -> str:
    _load_builtin()
    return _DESCRIPTIONS.get(name, "")


def create_model(
    name: str,
    *,
    weights: str | Path | None = None,
    device: torch.device | str | None = None,
) -> IQAModel:
    """Build the registered model ``name`` in eval mode on ``device``.

    ``weights``: ``None`` for the model's default (shipped weights for the
    embedded defaults; random initialization, without any download, for
    published architectures), or a local checkpoint path.
    """
    _load_builtin()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if name in _MODELS:
        model = _MODELS[name](weights=weights, device=dev)
    elif ":" in name and name.split(":", 1)[0] in _PREFIXES:
        prefix, sub = name.split(":", 1)
        model = _PREFIXES[prefix](sub, weights=weights, device=dev)
    else:
        raise InputError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return model.to(dev).eval()
