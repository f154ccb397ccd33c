"""Configuration of the verify gate, read from ``[tool.robustbench_iqa.verify]``.

A research repository points the gate at its own models, data and defenses by
editing that table in its pyproject.toml; every key has a default here.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustbench_iqa.errors import InputError
from robustbench_iqa.validation import MAX_SAMPLES

_KINDS: dict[str, str] = {
    "models": "strs", "defenses": "strs", "dataset": "str", "root": "str?", "size": "str?", "resize": "str?",
    "split": "str", "sigma": "float|floats", "n": "int", "audit_n": "int", "alpha": "float", "tau": "float",
    "eps": "float?", "limit": "int", "attack_steps": "int", "eot": "int", "stability_repeats": "int",
    "stability_limit": "int", "stability_n": "ints", "beyond_norms": "floats", "beyond_limit": "int",
    "max_abstain_rate": "float", "max_stability_deviation": "float", "seed": "int", "device": "str",
    "checkpoints": "dict", "weights": "dict", "accuracy_seeds": "ints",
}
"""The type of every key, checked (and lists turned into tuples) when a config is built."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool))


def _coerce(name: str, v: Any) -> Any:
    """``v`` as the type of key ``name`` (a one-item list may be given as a bare value), or InputError."""
    kind = _KINDS[name]
    bad = InputError(f"verify: `{name}` must be {_DESCRIBE[kind]}, got {v!r}")
    if kind.endswith("?"):
        if v is None:
            return None
        kind = kind[:-1]
    if kind == "float|floats":
        if isinstance(v, (list, tuple)):
            kind = "floats"
        else:
            kind = "float"
    if kind == "str":
        if not isinstance(v, str) or not v:
            raise bad
        return v
    if kind == "int":
        if not _is_int(v):
            raise bad
        return int(v)
    if kind == "float":
        if not _is_number(v):
            raise bad
        return float(v)
    if kind in ("strs", "ints", "floats"):
        items = list(v) if isinstance(v, (list, tuple)) else [v]
        check = {"strs": lambda x: isinstance(x, str) and bool(x), "ints": _is_int, "floats": _is_number}[kind]
        if not all(check(x) for x in items):
            raise bad
        conv = {"strs": str, "ints": int, "floats": float}[kind]
        return tuple(conv(x) for x in items)
    if kind == "dict":
        if not isinstance(v, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in v.items()):
            raise bad
        return dict(v)
    raise AssertionError(kind)  # pragma: no cover


_DESCRIBE = {
    "str": "a non-empty string", "str?": "a string", "int": "an integer", "float": "a number",
    "float?": "a number", "float|floats": "a number or a list of numbers", "strs": "a list of names",
    "ints": "a list of integers", "floats": "a list of numbers", "dict": "a table of name = \"path\" entries",
}


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
    limit: int = 50
    attack_steps: int = 10
    eot: int = 8
    stability_repeats: int = 10
    stability_limit: int = 4
    """Images of the stability study (each predicted ``stability_repeats`` times per n)."""
    stability_n: tuple[int, ...] = (100, 500, 2000)
    beyond_norms: tuple[float, ...] = (0.02, 0.05, 0.1, 0.15, 0.2, 0.25)
    beyond_limit: int = 16
    max_abstain_rate: float = 0.2
    max_stability_deviation: float = 0.01
    seed: int = 0
    accuracy_seeds: tuple[int, ...] = ()
    """Further seeds of the accuracy study: the defended prediction of every image is repeated
    with each, so SRCC/PLCC are reported as mean +- SE across models *and* seeds."""
    device: str = "cpu"
    checkpoints: dict[str, str] = field(default_factory=dict)
    """Optional trained heads and denoisers: ``{"model": path}`` or ``{"model@0.25": path}``
    for FS-IQA heads, ``{"model:dms@0.25": path}`` for a denoiser (see
    :func:`robustbench_iqa.runner.context.checkpoint_for`)."""
    weights: dict[str, str] = field(default_factory=dict)
    """Optional ``{model: path}`` of local model weights."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name)))

    def validate(self) -> VerifyConfig:
        """Range checks of every key (types are checked on construction); returns self."""
        from robustbench_iqa.data.images import Resize, parse_size

        if not self.defenses:
            raise InputError("verify: `defenses` is empty")
        if self.split not in ("train", "test", "all"):
            raise InputError(f"verify: split must be train, test or all, got {self.split!r}")
        parse_size(self.size)
        if self.resize is not None and self.resize not in [r.value for r in Resize]:
            raise InputError(f"verify: resize must be one of {[r.value for r in Resize]}, got {self.resize!r}")
        for name in ("alpha", "tau", "eps", "max_abstain_rate", "max_stability_deviation"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise InputError(f"verify: {name} must be a finite number, got {v}")
        if not all(math.isfinite(v) for v in (*self.sigmas(), *self.beyond_norms)):
            raise InputError(f"verify: sigma and beyond_norms must be finite, got {self.sigma}, {self.beyond_norms}")
        if not (self.tau >= 0):
            raise InputError(f"verify: tau must be >= 0, got {self.tau}")
        if self.eps is not None and not (self.eps > 0):
            raise InputError(f"verify: eps must be > 0, got {self.eps}")
        if not (0 <= self.max_stability_deviation):
            raise InputError(f"verify: max_stability_deviation must be >= 0, got {self.max_stability_deviation}")
        _check_device(self.device)
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
        if not 0 <= self.seed < 2**63:
            raise InputError(f"verify: seed must lie in [0, 2^63), got {self.seed}")
        for name in ("n", "audit_n"):
            if int(getattr(self, name)) > MAX_SAMPLES:
                raise InputError(f"verify: {name} must be at most {MAX_SAMPLES:,}, got {getattr(self, name)}")
        if any(int(v) > MAX_SAMPLES for v in self.stability_n):
            raise InputError(f"verify: stability_n must be at most {MAX_SAMPLES:,}, got {self.stability_n}")
        if any(not 0 <= int(v) < 2**63 for v in self.accuracy_seeds):
            raise InputError(f"verify: accuracy_seeds must lie in [0, 2^63), got {self.accuracy_seeds}")
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


def _check_device(device: str) -> None:
    from robustbench_iqa.validation import check_device

    try:
        check_device(device)
    except InputError as exc:
        raise InputError(f"verify: {exc}") from None


def _verify_table(p: Path, *, required: bool) -> dict[str, Any]:
    """The ``[tool.robustbench_iqa.verify]`` table of the TOML file ``p`` ({} if absent and not required)."""
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"config file {p} is not a UTF-8 text (TOML) file") from None
    except OSError as exc:
        raise InputError(f"cannot read config file {p}: {exc.strerror or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"cannot parse {p}: {exc}") from None
    section: Any = data
    for key in ("tool", "robustbench_iqa", "verify"):
        if not isinstance(section, dict) or key not in section:
            if required:
                raise InputError(f"{p} has no [tool.robustbench_iqa.verify] table")
            return {}
        section = section[key]
    if not isinstance(section, dict):
        raise InputError(f"{p}: tool.robustbench_iqa.verify must be a table, got {section!r}")
    return section


def load_config(path: str | Path | None = None, **overrides: Any) -> VerifyConfig:
    """Read the verify table of ``path`` (default: ./pyproject.toml if it exists)."""
    table: dict[str, Any] = {}
    p = Path(path) if path is not None else Path("pyproject.toml")
    if path is not None and p.is_dir():
        raise InputError(f"config file {p} is a directory; give a pyproject.toml")
    if path is not None and not p.is_file():
        raise InputError(f"config file not found: {p}")
    if p.is_file():
        table = _verify_table(p, required=path is not None)
    known = {f.name: f for f in dataclasses.fields(VerifyConfig)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise InputError(f"unknown keys in [tool.robustbench_iqa.verify] of {p}: {', '.join(unknown)}")
    values = {**table, **{k: v for k, v in overrides.items() if v is not None}}
    return VerifyConfig(**values).validate()
