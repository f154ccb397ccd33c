"""robustbench_iqa: certify, attack and audit the adversarial robustness of IQA models.

The public API in a few names::

    from robustbench_iqa import create_model, create_dataset
    from robustbench_iqa.certify import create_defense

Sub-packages: :mod:`robustbench_iqa.certify` (defenses and their mathematics),
:mod:`robustbench_iqa.attacks`, :mod:`robustbench_iqa.analysis` (pure pandas/scipy,
no torch), :mod:`robustbench_iqa.runner` (the verify gate).  Names are imported on
first use, so ``import robustbench_iqa.analysis`` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_LAZY = {
    "IQADataset": "robustbench_iqa.data",
    "create_dataset": "robustbench_iqa.data",
    "list_datasets": "robustbench_iqa.data",
    "IQAModel": "robustbench_iqa.models",
    "Mode": "robustbench_iqa.models",
    "create_model": "robustbench_iqa.models",
    "list_models": "robustbench_iqa.models",
    "model_info": "robustbench_iqa.models",
    "InputError": "robustbench_iqa.errors",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'robustbench_iqa' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
