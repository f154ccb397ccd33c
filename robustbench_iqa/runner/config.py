"""Configuration of the verify gate, read from ``[tool.robustbench_iqa.verify]``.

A research repository points the gate at its own models, data and defenses by
editing that table in its pyproject.toml; every key has a default here.  The table
holds the run-wide settings (:class:`VerifyConfig`); each study has its own
sub-table, ``[tool.robustbench_iqa.verify.<study>]``, typed by the study's
``Config`` dataclass (:mod:`robustbench_iqa.studies`).  Types are checked from the
annotations when a config is built (:mod:`robustbench_iqa.typed_config`), ranges
by :meth:`VerifyConfig.validate`; unknown keys are refused with a did-you-mean.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustbench_iqa.errors import InputError
from robustbench_iqa.runner.defense_tables import TABLE, DefenseTable, parse_tables, table_for
from robustbench_iqa.studies.base import STUDIES, get_study, list_studies
from robustbench_iqa.typed_config import build
from robustbench_iqa.validation import MAX_SAMPLES

MOVED: dict[str, str] = {
    "audit_n": "audit.n", "attack_steps": "audit.steps (and beyond.steps)", "eot": "audit.eot (and beyond.eot)",
    "stability_repeats": "stability.repeats", "stability_limit": "stability.limit", "stability_n": "stability.n",
    "beyond_norms": "beyond.norms", "beyond_limit": "beyond.limit", "max_abstain_rate": "certify.max_abstain_rate",
    "max_stability_deviation": "stability.max_deviation", "accuracy_seeds": "accuracy.seeds",
}
"""Keys of earlier versions and where they live now (named in the error message)."""


@dataclass(frozen=True)
class VerifyConfig:
    """Run-wide settings of the gate (study settings live in ``sections``)."""

    models: tuple[str, ...] = ("default-nr", "default-fr")
    dataset: str = "default"
    root: str | None = None
    size: str | None = None
    """Working size ``"HxW"`` (e.g. ``"384x512"``, as in the FS-IQA study); default: the dataset's."""
    resize: str | None = None
    """``resize``, ``center-crop`` or ``none``; default: the dataset's.  Both are recorded in the run."""
    dataset_options: dict[str, str] = field(default_factory=dict)
    """The dataset's own keyword options, e.g. ``{ score_column = "MOS_zscore" }`` for KonIQ-10k's
    0-100 target (a key the dataset does not take is refused)."""
    split: str = "test"
    """The part of the dataset the gate evaluates: ``test`` (default), ``train``, ``validation`` or
    ``all``.  A dataset with an official split gives its official set (KonIQ-10k's ``test`` set,
    as the FS-IQA study evaluates on the test part); others a seeded 80/20 split by reference
    (:meth:`robustbench_iqa.data.base.IQADataset.select`)."""
    split_seed: int = 0
    """Seed of the seeded split of a dataset without an official one (unused otherwise)."""
    defenses: tuple[str, ...] = ("fs-iqa",)
    sigma: float | tuple[float, ...] = 0.25
    """Noise standard deviation of the defenses; a list runs every study at each value
    (e.g. ``[0.1, 0.25, 0.5]`` for the FS-IQA Tables 1-2 layout)."""
    n: int = 2000
    alpha: float = 0.999
    tau: float = 1e-3
    eps: float | None = None
    """Input radius certified by input-space defenses (default sigma / 2)."""
    limit: int = 50
    seed: int = 0
    device: str = "cpu"
    batch_size: int = 8
    """Images per unit of work (a batch through the model on one device)."""
    checkpoints: dict[str, str] = field(default_factory=dict)
    """Optional trained heads and denoisers: ``{"model": path}`` or ``{"model@0.25": path}``
    for FS-IQA heads, ``{"model:dms@0.25": path}`` for a denoiser (see
    :func:`robustbench_iqa.runner.workspace.checkpoint_for`)."""
    weights: dict[str, str] = field(default_factory=dict)
    """``{model: "pretrained" | path | "random"}``: the weights of each model.  Required for a published
    architecture (dbcnn, hyperiqa, koncept, lpips, dists, dreamsim): none is ever random by accident."""
    model_options: dict[str, str] = field(default_factory=dict)
    """A model's evaluation protocol: ``{"model.option": value}``, e.g. ``{"hyperiqa.crops" = "random",
    "hyperiqa.input_size" = "512x384"}`` (integers and numbers are converted); recorded with the run."""
    plugins: tuple[str, ...] = ()
    """Modules imported before anything is built: a research repo registers its own models,
    datasets, defenses or studies there (``@register_model(...)`` etc.)."""
    studies: tuple[str, ...] | None = None
    """Studies to run (default: every registered study marked ``default``)."""
    sections: Mapping[str, Any] = field(default_factory=dict)
    """Per-study settings: study name -> its ``Config`` dataclass instance."""
    defense_tables: Mapping[str, DefenseTable] = field(default_factory=dict)
    """Per-defense options, ``[verify.defense.<name>]`` (:mod:`robustbench_iqa.runner.defense_tables`)."""

    # ---------------------------------------------------------------- building
    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], *, where: str = "verify") -> VerifyConfig:
        """Build from a ``[tool.robustbench_iqa.verify]`` table (sub-tables are study sections)."""
        table = dict(table)
        for old, new in MOVED.items():
            if old in table:
                raise InputError(f"`{where}.{old}` is now `{where}.{new}` (a sub-table per study)")
        _import_plugins(table.get("plugins", ()), where)
        studies = set(STUDIES.names())
        nested = {k: table.pop(k) for k in list(table) if k in studies}
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("sections", "defense_tables")]
        if "sections" in table:
            raise InputError(f"`{where}.sections` is not a key; give each study's settings as [{where}.<study>]")
        tables = parse_tables(table.pop(TABLE, {}), where=where)
        base = build(_Globals, {k: v for k, v in table.items() if k in names or k not in studies},
                     where=where)
        sections = {name: _section(name, nested.get(name, {}), where) for name in sorted(studies)}
        return cls(**{f.name: getattr(base, f.name) for f in dataclasses.fields(_Globals)}, sections=sections,
                   defense_tables=tables)

    def with_overrides(self, **values: Any) -> VerifyConfig:
        """This config with run-wide keys replaced (None values ignored), re-checked."""
        table = {k: v for k, v in self.globals().items()}
        table.update({k: v for k, v in values.items() if v is not None})
        base = build(_Globals, table, where="verify")
        return dataclasses.replace(self, **{f.name: getattr(base, f.name) for f in dataclasses.fields(_Globals)})

    def with_section(self, study: str, **values: Any) -> VerifyConfig:
        """This config with settings of one study replaced."""
        current = dataclasses.asdict(self.section(study))
        current.update(values)
        return dataclasses.replace(self, sections={**self.sections, study: _section(study, current, "verify")})

    # ---------------------------------------------------------------- reading
    def section(self, study: str) -> Any:
        """The settings of ``study`` (its Config dataclass; defaults if not configured)."""
        if study not in self.sections:
            return _section(study, {}, "verify")
        return self.sections[study]

    def active_studies(self) -> tuple[str, ...]:
        """The studies this run runs, in registry order."""
        if self.studies is None:
            return tuple(list_studies(default=True))
        return tuple(self.studies)

    def sigmas(self) -> tuple[float, ...]:
        """The sigma values of the run, in order."""
        if isinstance(self.sigma, (tuple, list)):
            return tuple(float(v) for v in self.sigma)
        return (float(self.sigma),)

    def defense_cases(self) -> tuple[tuple[str, float], ...]:
        """The (defense, sigma) pairs of the run, in order: every sigma for a defense that draws
        noise; sigma 0, once, for one that draws none (the empirical transforms)."""
        from robustbench_iqa.certify.defense import DEFENSES

        out: list[tuple[str, float]] = []
        for s in self.sigmas():
            for d in self.defenses:
                r = self.registered(d)
                noise = DEFENSES.metadata(r).get("noise", True) if r in DEFENSES else True
                case = (d, float(s)) if noise else (d, 0.0)
                if case not in out:
                    out.append(case)
        return tuple(out)

    def certified(self, defense: str) -> bool:
        """Whether ``defense`` has a certificate (the empirical ones predict only)."""
        from robustbench_iqa.certify.defense import DEFENSES

        r = self.registered(defense)
        return bool(DEFENSES.metadata(r).get("certified", True)) if r in DEFENSES else True

    # ------------------------------------------------- per-defense options
    def defense_table(self, name: str) -> DefenseTable:
        """The options of defense name ``name`` of ``defenses`` (``[verify.defense.<name>]``)."""
        return table_for(self.defense_tables, name)

    def registered(self, name: str) -> str:
        """The registered defense that defense name ``name`` builds (itself, or a variant's)."""
        return self.defense_table(name).defense

    def globals(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(_Globals)}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(_Globals(**self.globals()))
        d["sections"] = {k: dataclasses.asdict(v) for k, v in sorted(self.sections.items())}
        if self.defense_tables:  # only when given: the records of runs without them stay as they were
            d[TABLE] = {k: t.to_dict() for k, t in sorted(self.defense_tables.items())}
        return d

    # ------------------------------------------------------------- validation
    def validate(self) -> VerifyConfig:
        """Range checks of every key (types are checked on construction); returns self."""
        from robustbench_iqa.data.images import Resize, parse_dataset_size
        from robustbench_iqa.validation import check_device

        if not self.models:
            raise InputError("verify: `models` is empty")
        if not self.defenses:
            raise InputError("verify: `defenses` is empty")
        if self.studies is not None and not self.studies:
            raise InputError("verify: `studies` is empty: a gate that runs no check cannot pass; name studies "
                             "or remove the key (every default study)")
        for key in ("models", "defenses", "studies"):
            _no_duplicates(key, getattr(self, key) or ())
        _no_duplicates("sigma", self.sigmas())
        from robustbench_iqa.data.base import parse_split

        try:
            parse_split(self.split)
        except InputError as exc:
            raise InputError(f"verify: {exc}") from None
        if not 0 <= self.split_seed < 2**63:
            raise InputError(f"verify: split_seed must lie in [0, 2^63), got {self.split_seed}")
        parse_dataset_size(self.size)
        if self.resize is not None and self.resize not in [r.value for r in Resize]:
            raise InputError(f"verify: resize must be one of {[r.value for r in Resize]}, got {self.resize!r}")
        if not (self.tau >= 0):
            raise InputError(f"verify: tau must be >= 0, got {self.tau}")
        if self.eps is not None and not (self.eps > 0):
            raise InputError(f"verify: eps must be > 0, got {self.eps}")
        try:
            check_device(self.device)
        except InputError as exc:
            raise InputError(f"verify: {exc}") from None
        if not (0.5 <= self.alpha < 1):
            raise InputError(f"verify: alpha is the confidence of the certificates and must lie in [0.5, 1), "
                             f"e.g. 0.999; got {self.alpha}")
        if not self.sigmas() or any(not (float(v) > 0) for v in self.sigmas()):
            raise InputError(f"verify: sigma must be > 0 (one value or a list), got {self.sigma}")
        for name in ("n", "limit", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"verify: {name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**63:
            raise InputError(f"verify: seed must lie in [0, 2^63), got {self.seed}")
        if self.n > MAX_SAMPLES:
            raise InputError(f"verify: n must be at most {MAX_SAMPLES:,}, got {self.n}")
        for name in self.active_studies():
            if name not in STUDIES:
                STUDIES.entry(name)  # raises with a did-you-mean
        for name, sec in self.sections.items():
            check = getattr(sec, "validate", None)
            if check is not None:
                check(f"verify.{name}")
        return self


@dataclass(frozen=True)
class _Globals:
    """The run-wide keys and their types (VerifyConfig without ``sections``)."""

    models: tuple[str, ...] = VerifyConfig.models
    dataset: str = VerifyConfig.dataset
    root: str | None = None
    size: str | None = None
    resize: str | None = None
    dataset_options: dict[str, str] = field(default_factory=dict)
    split: str = VerifyConfig.split
    split_seed: int = VerifyConfig.split_seed
    defenses: tuple[str, ...] = VerifyConfig.defenses
    sigma: float | tuple[float, ...] = VerifyConfig.sigma
    n: int = VerifyConfig.n
    alpha: float = VerifyConfig.alpha
    tau: float = VerifyConfig.tau
    eps: float | None = None
    limit: int = VerifyConfig.limit
    seed: int = VerifyConfig.seed
    device: str = VerifyConfig.device
    batch_size: int = VerifyConfig.batch_size
    checkpoints: dict[str, str] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)
    model_options: dict[str, str] = field(default_factory=dict)
    plugins: tuple[str, ...] = ()
    studies: tuple[str, ...] | None = None


def _no_duplicates(key: str, values: Any) -> None:
    seen: set[Any] = set()
    for v in values:
        if v in seen:
            raise InputError(f"verify: `{key}` lists {v!r} twice; list each once")
        seen.add(v)


def _option_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text


def options_of(cfg: VerifyConfig, model: str) -> dict[str, Any]:
    """The keyword options of ``model`` from ``model_options`` (``"model.option" = value``)."""
    out: dict[str, Any] = {}
    for key, value in cfg.model_options.items():
        name, sep, option = key.rpartition(".")
        if not sep or not name or not option:
            raise InputError(f"verify: model_options key {key!r} must look like \"model.option\", "
                             f"e.g. \"hyperiqa.crops\"")
        if name == model:
            out[option] = _option_value(value)
    return out


def _section(study: str, values: Mapping[str, Any], where: str) -> Any:
    return build(get_study(study).Config, values, where=f"{where}.{study}")


def _import_plugins(plugins: Any, where: str) -> None:
    from robustbench_iqa.plugins import import_plugin, plugin_names

    for mod in plugin_names(plugins, where=f"`{where}.plugins`"):
        import_plugin(mod, where=f"`{where}.plugins`")


def default_config() -> VerifyConfig:
    return VerifyConfig.from_mapping({})


def _verify_table(p: Path, *, required: bool) -> dict[str, Any]:
    """The ``[tool.robustbench_iqa.verify]`` table of the TOML file ``p`` ({} if absent and not required)."""
    try:
        text = p.read_bytes().decode("utf-8-sig")  # a byte-order mark (Windows editors) is not TOML: dropped
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
    """Read the verify table of ``path`` (default: ./pyproject.toml if it exists).

    ``overrides`` replace run-wide keys (None values are ignored).
    """
    table: dict[str, Any] = {}
    p = Path(path) if path is not None else Path("pyproject.toml")
    if path is not None and p.is_dir():
        raise InputError(f"config file {p} is a directory; give a pyproject.toml")
    if path is not None and not p.is_file():
        raise InputError(f"config file not found: {p}" if not p.exists() else f"config path {p} is not a file")
    if p.is_file():
        table = dict(_verify_table(p, required=path is not None))
    try:
        cfg = VerifyConfig.from_mapping(table)
    except InputError as exc:
        raise InputError(f"{p}: {exc}" if p.is_file() else str(exc)) from None
    return cfg.with_overrides(**overrides).validate()
