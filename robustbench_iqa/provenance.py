"""What identifies a run and the files it used: versions, settings, file hashes, the config as JSON.

A result is only as reproducible as its record.  Every run configuration carries the package
versions that change results (:func:`package_versions`), the runtime settings that change its
last bits (:func:`runtime_settings`, compared on resume with a warning only), and the SHA-256 of
each file it read (weights, checkpoints, trained artifacts: :func:`file_sha256`).  The
configuration is kept as it reads back from JSON (:func:`canonical_config`), so a stored config
and a new one compare equal exactly when their settings do (:func:`config_diff`).

These helpers sit below every package: models hash their weights, defenses their artifacts,
the runner and the CLI build run configurations, and the results store
(:mod:`robustbench_iqa.store`) compares them on resume.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from robustbench_iqa.errors import InputError


def package_versions() -> dict[str, str]:
    """Versions that change results: python, torch, numpy and robustbench_iqa."""
    import torch

    import robustbench_iqa

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "robustbench_iqa": robustbench_iqa.__version__,
    }


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file (weights hash for the run configuration)."""
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p} is not a file: it is a directory")
    if not p.is_file():
        raise InputError(f"{p} is not a file: not found")
    h = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def runtime_settings() -> dict[str, Any]:
    """Settings that change results in the last bits only: torch's CPU thread count and
    whether deterministic algorithms are enforced.

    Recorded with every run (``config["runtime"]``) but not part of its identity:
    a resumed run whose settings differ is allowed, with a
    :class:`~robustbench_iqa.errors.ReproducibilityWarning`, since its new rows
    equal an uninterrupted run's only to a tolerance (reductions summed in
    another order; ~1e-7 relative), not bit for bit.
    """
    import torch

    return {
        "torch_threads": int(torch.get_num_threads()),
        "deterministic_algorithms": bool(torch.are_deterministic_algorithms_enabled()),
    }


RUNTIME_KEY = "runtime"
"""The key of :func:`runtime_settings` in a run configuration (compared on resume with a warning only)."""


def run_config(**settings: Any) -> dict[str, Any]:
    """A run configuration: the given settings plus ``versions`` (:func:`package_versions`)
    and ``runtime`` (:func:`runtime_settings`)."""
    return canonical_config({**settings, "versions": package_versions(), RUNTIME_KEY: runtime_settings()})


def _json_default(o: Any) -> Any:
    if isinstance(o, Enum):
        return o.value
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def json_text(obj: Any, what: str) -> str:
    """``obj`` as JSON text (keys sorted; enums, paths, numpy values and sets converted; inf and NaN kept);
    :class:`InputError` naming ``what`` if it cannot be written."""
    try:
        # allow_nan keeps inf radii and NaN scores; only this module reads them back.
        return json.dumps(obj, sort_keys=True, default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} is not JSON serializable: {exc}") from None


def canonical_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config as it reads back from JSON (tuples become lists, enums strings)."""
    if not isinstance(config, Mapping):
        raise InputError(f"run config must be a mapping, got {type(config).__name__}")
    return dict(json.loads(json_text(dict(config), "run config")))


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted names of the keys whose values differ between two configs."""
    out: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k, _MISSING), b.get(k, _MISSING), f"{prefix}{k}.")
        elif a != b:
            out.append(prefix.rstrip("."))

    walk(canonical_config(old), canonical_config(new), "")
    return out


_MISSING = object()
