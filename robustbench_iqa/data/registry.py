"""One registry of datasets: :func:`list_datasets` and :func:`create_dataset`.

A factory takes ``root`` (a local folder, or None for datasets the suite builds
itself), ``size`` and ``resize``, and returns an :class:`IQADataset`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from robustbench_iqa.data.base import IQADataset
from robustbench_iqa.errors import InputError

DatasetFactory = Callable[..., IQADataset]

_DATASETS: dict[str, DatasetFactory] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_dataset(name: str, description: str = "") -> Callable[[DatasetFactory], DatasetFactory]:
    def deco(factory: DatasetFactory) -> DatasetFactory:
        if name in _DATASETS:
            raise ValueError(f"dataset {name!r} is registered twice")
        _DATASETS[name] = factory
        _DESCRIPTIONS[name] = description
        return factory

    return deco


def _load_builtin() -> None:
    import importlib

    for mod in ("embedded", "koniq", "kadid", "csv_dataset"):
        try:
            importlib.import_module(f"robustbench_iqa.data.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"robustbench_iqa.data.{mod}":
                raise


def list_datasets() -> list[str]:
    _load_builtin()
    return sorted(_DATASETS)


def describe_dataset(name: str) -> str:
    _load_builtin()
    return _DESCRIPTIONS.get(name, "")


def create_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    size: tuple[int, int] | None = None,
    resize: str | None = None,
) -> IQADataset:
    """Build dataset ``name``; ``root`` is its local folder where one is needed."""
    _load_builtin()
    if name not in _DATASETS:
        raise InputError(f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}")
    kwargs: dict[str, object] = {"root": Path(root) if root is not None else None}
    if size is not None:
        kwargs["size"] = size
    if resize is not None:
        kwargs["resize"] = resize
    return _DATASETS[name](**kwargs)
