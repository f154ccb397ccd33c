"""Configuration of the verify gate, read from ``[tool.robustbench_iqa.verify]``.

A research repository points the gate at its own models, data and defenses by
editing that table in its pyproject.toml; every key has a default here.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustbench_iqa.errors import InputError


@dataclass(frozen=True)
class VerifyConfig:
    models: tuple[str, ...] = ("default-nr", "default-fr")
    dataset: str = "default"
    root: str | None = None
    size: str | None = None
    """Working size ``"HxW"`` (e.g. ``"384x512"``, as in the FS-IQA study); default: the dataset's."""
    resize: str | None = None
    """``resize``, ``center-crop`` or ``none``; default: the dataset's.  Both are recorded in the run."""
    split: str = "test"
    defenses: tuple[str, ...] = ("fs-iqa",)
    sigma: float | tuple[float, ...] = 0.25
    """Noise standard deviation of the defenses; a list runs every study at each value
    (e.g. ``[0.1, 0.25, 0.5]`` for the FS-IQA Tables 1-2 layout)."""
    n: int = 2000
    audit_n: int = 4000
    alpha: float = 0.999
    tau: float = 1e-3
    eps: float | None = None
    """Input radius certified by input-space defenses (default sigma / 2)."""
    limit: int = 12
    attack_steps: int = 10
    eot: int = 8
    stability_repeats: int = 10
    stability_limit: int = 4
    """Images of the stability study (each predicted ``stability_repeats`` times per n)."""
    stability_n: tuple[int, ...] = (100, 500, 2000)
    beyond_norms: tuple[float, ...] = (0.02, 0.05, 0.1, 0.15, 0.2, 0.25)
    beyond_limit: int = 8
    max_abstain_rate: float = 0.2
    max_stability_deviation: float = 0.01
    seed: int = 0
    device: str = "cpu"
    checkpoints: dict[str, str] = field(default_factory=dict)
    """Optional trained heads and denoisers: ``{"model": path}`` or ``{"model@0.25": path}``
    for FS-IQA heads, ``{"model:dms@0.25": path}`` for a denoiser (see
    :func:`robustbench_iqa.runner.context.checkpoint_for`)."""
    weights: dict[str, str] = field(default_factory=dict)
    """Optional ``{model: path}`` of local model weights."""

    def validate(self) -> VerifyConfig:
        if not self.models:
            raise InputError("verify: `models` is empty")
        if not (0 < self.alpha < 1):
            raise InputError(f"verify: alpha must lie in (0, 1), got {self.alpha}")
        if not self.sigmas() or any(not (float(v) > 0) for v in self.sigmas()):
            raise InputError(f"verify: sigma must be > 0 (one value or a list), got {self.sigma}")
        for name in ("n", "audit_n", "limit", "attack_steps", "eot", "stability_repeats",
                     "stability_limit", "beyond_limit"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"verify: {name} must be >= 1, got {getattr(self, name)}")
        if not self.stability_n or any(int(v) < 1 for v in self.stability_n):
            raise InputError(f"verify: stability_n must be positive sample counts, got {self.stability_n}")
        if any(not (v > 0) for v in self.beyond_norms):
            raise InputError(f"verify: beyond_norms must be > 0, got {self.beyond_norms}")
        if not (0 <= self.max_abstain_rate <= 1):
            raise InputError(f"verify: max_abstain_rate must lie in [0, 1], got {self.max_abstain_rate}")
        if self.stability_repeats < 2:
            raise InputError("verify: stability_repeats must be >= 2 (a deviation needs two predictions)")
        return self

    def sigmas(self) -> tuple[float, ...]:
        """The sigma values of the run, in order."""
        if isinstance(self.sigma, (tuple, list)):
            return tuple(float(v) for v in self.sigma)
        return (float(self.sigma),)

    def at_sigma(self, sigma: float) -> VerifyConfig:
        """This configuration with one sigma (what the jobs of one sigma see)."""
        return dataclasses.replace(self, sigma=float(sigma))

    @property
    def sigma_value(self) -> float:
        """The single sigma of a per-sigma configuration (see :meth:`at_sigma`)."""
        values = self.sigmas()
        if len(values) != 1:
            raise InputError(f"verify: expected one sigma here, got {values}")
        return values[0]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_config(path: str | Path | None = None, **overrides: Any) -> VerifyConfig:
    """Read the verify table of ``path`` (default: ./pyproject.toml if it exists)."""
    table: dict[str, Any] = {}
    p = Path(path) if path is not None else Path("pyproject.toml")
    if path is not None and not p.is_file():
        raise InputError(f"config file not found: {p}")
    if p.is_file():
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"cannot parse {p}: {exc}") from None
        table = data.get("tool", {}).get("robustbench_iqa", {}).get("verify", {})
    known = {f.name: f for f in dataclasses.fields(VerifyConfig)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise InputError(f"unknown keys in [tool.robustbench_iqa.verify] of {p}: {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for k, v in {**table, **{k: v for k, v in overrides.items() if v is not None}}.items():
        values[k] = tuple(v) if isinstance(v, list) else v
    return VerifyConfig(**values).validate()
