"""The registry of datasets: :func:`list_datasets` and :func:`create_dataset`.

A factory takes ``root`` (a local folder, or None for datasets the suite builds
itself), ``size`` and ``resize`` (and its own options, keyword-only), and
returns an :class:`IQADataset`.  Each dataset registers itself next to its
loader with :func:`register_dataset`; a new dataset is one new module in this
package.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from robustbench_iqa.data.base import IQADataset
from robustbench_iqa.data.images import DEFAULT_SIZE, parse_dataset_size
from robustbench_iqa.registry import Registry

DATASETS: Registry[IQADataset] = Registry("dataset", package="robustbench_iqa.data")

F = TypeVar("F", bound=Callable[..., IQADataset])


def register_dataset(name: str, *, references: bool | None, needs_root: bool = True,
                     description: str = "") -> Callable[[F], F]:
    """Decorator registering a dataset factory.

    ``references``: whether its samples have FR references (None: depends on the data, e.g. a CSV).
    """
    return DATASETS.register(name, description=description, references=references,
                             needs_root=bool(needs_root))


def list_datasets(*, references: bool | None = None) -> list[str]:
    return DATASETS.names() if references is None else DATASETS.names(references=references)


def describe_dataset(name: str) -> str:
    return DATASETS.describe(name)


def create_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    size: tuple[int, int] | str | None = DEFAULT_SIZE,
    resize: str | None = None,
    **options: Any,
) -> IQADataset:
    """Build dataset ``name``; ``root`` is its local folder where one is needed.

    ``size``: ``(H, W)`` (or ``"HxW"``) to bring every image to; ``None`` or ``"native"``: each
    image at its own size (no resize); ``"default"`` (the default): the dataset's own working
    size (384x512 for KonIQ-10k and KADID-10k, as in the FS-IQA study).  ``resize`` left at
    None keeps the dataset's resize policy.  ``options`` are the dataset's own keyword
    arguments, e.g. KonIQ-10k's ``score_column`` and ``split`` (a keyword it does not take raises).
    """
    kwargs: dict[str, Any] = {"root": Path(root) if root is not None else None, **options}
    if isinstance(size, str):
        size = parse_dataset_size(size)
    if size != DEFAULT_SIZE:
        kwargs["size"] = size
    if resize is not None:
        kwargs["resize"] = resize
    return DATASETS.create(name, **kwargs)
