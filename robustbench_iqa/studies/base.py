"""What a study is: keyed units of work, typed rows, its checks, its summary and its report section.

A **study** (certificates, their audit, stability, beyond-certificate attacks, ...) is
one object in one registry (:data:`STUDIES`), defined in one module of this package:

* ``tables``: the row schemas it writes, frozen dataclasses (:class:`Row`) shared by
  the writer (its job) and every reader (checks, summary, report);
* ``Config``: its section of the verify configuration
  (``[tool.robustbench_iqa.verify.<name>]``), a frozen dataclass whose annotations
  are the types the loader checks (:mod:`robustbench_iqa.runner.config`);
* :meth:`Study.units`: its work as explicit, picklable, keyed :class:`Unit` values;
  :meth:`Study.run` turns one unit into rows.  The same unit gives the same rows on
  any executor, in any order, after any restart: its randomness derives from its key;
* a study with ``stage = "certify"`` runs inside the ``certify`` study's units on
  their freshly certified batch (:meth:`Study.on_certified`), so it reuses the
  clean pass, the certificate and its evidence (the audit does); the runner hands the
  batch over (:meth:`Study.run_stage`), so no study dispatches another;
* :meth:`Study.checks` and :meth:`Study.summary`: the gate's verdicts and headline
  numbers, from the run's rows loaded once (:class:`RunData`);
* :meth:`Study.report`: its section of the report (tables, figures, notes).

Adding a study is one new module here plus its test; ``verify``, the gate, the
report and the CLI's ``--out`` stores iterate the registry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import pandas as pd

from robustbench_iqa.registry import Registry
from robustbench_iqa.store import KEY_FIELDS, ResultsStore, RowKey

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from robustbench_iqa.studies.context import CertifiedBatch, RunConfig, StudyPlan, StudyWorkspace



# ------------------------------------------------------------------- units
@dataclass(frozen=True)
class Unit:
    """One unit of work: a study on a batch of inputs of one (model, defense, sigma).

    ``images`` are input identities (name and content hash, see
    :func:`robustbench_iqa.runner.plan.input_id`); ``part`` names a sub-case of the
    study (a norm ``"l2=0.05"``, a sample count ``"n=500"``, a seed ``"seed=3"``).
    Small, picklable, and keyed: :attr:`key` is stable across processes and runs.
    """

    study: str
    model: str
    defense: str = "none"
    sigma: float = 0.0
    images: tuple[str, ...] = ()
    part: str = ""

    @property
    def key(self) -> str:
        digest = hashlib.sha256("\x1f".join(self.images).encode()).hexdigest()[:16]
        return f"{self.study}/{self.model}/{self.defense}/{self.sigma:g}/{self.part}/{len(self.images)}:{digest}"

    def info(self) -> dict[str, Any]:
        """What the store records of the unit beside its key."""
        return {"model": self.model, "defense": self.defense, "sigma": self.sigma, "part": self.part,
                "images": len(self.images)}


# -------------------------------------------------------------------- rows
class Row:
    """Base of the row schemas: frozen dataclasses with a ``table`` name.

    Fields marked ``finite()`` must be finite numbers on rows that did not abstain
    (the gate's finite check reads this metadata).
    """

    table: ClassVar[str]

    def payload(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload, no-any-return]

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    @classmethod
    def finite_columns(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.metadata.get("finite")]  # type: ignore[arg-type]


def finite(default: Any = dataclasses.MISSING) -> Any:
    """A row field that must be finite (unless the row abstained)."""
    if default is dataclasses.MISSING:
        return field(metadata={"finite": True})
    return field(default=default, metadata={"finite": True})


@dataclass(frozen=True)
class Record:
    """One row to store: its key and its typed payload."""

    key: RowKey
    row: Row

    def as_pair(self) -> tuple[RowKey, dict[str, Any]]:
        return self.key, self.row.payload()


def record(row: Row, unit: Unit, image: str, extra: str = "", *, defense: str | None = None,
           sigma: float | None = None) -> Record:
    """A :class:`Record` keyed by ``unit``'s model/defense/sigma (or the given defense/sigma)."""
    return Record(RowKey(row.table, unit.model, unit.defense if defense is None else defense,
                         unit.sigma if sigma is None else sigma, image, extra), row)


# ------------------------------------------------------------------ checks
@dataclass(frozen=True)
class Check:
    """One verdict of the gate for one (model, defense, sigma) group."""

    name: str
    model: str
    defense: str
    sigma: float
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


Group = tuple[str, str, float]
"""(model, defense, sigma)."""


class RunData:
    """A run's tables, each loaded once from the store, with every schema column present."""

    def __init__(self, store: ResultsStore) -> None:
        self.store = store
        self.config: dict[str, Any] = store.config
        self._frames: dict[str, pd.DataFrame] = {}

    def frame(self, schema: type[Row]) -> pd.DataFrame:
        """The rows of ``schema.table`` (key columns + schema columns; missing ones as NaN)."""
        name = schema.table
        if name not in self._frames:
            df = self.store.frame(name)
            if not df.empty:  # key order, not insertion order: the same verdict whatever the executor
                df = df.sort_values(list(KEY_FIELDS), kind="stable").reset_index(drop=True)
            for f in dataclasses.fields(schema):  # type: ignore[arg-type]
                if f.name not in df:
                    default = f.default if f.default is not dataclasses.MISSING else math.nan
                    df[f.name] = [default] * len(df) if isinstance(default, (tuple, list)) else default
            self._frames[name] = df
        return self._frames[name]

    def groups(self, schema: type[Row]) -> list[tuple[Group, pd.DataFrame]]:
        df = self.frame(schema)
        if df.empty:
            return []
        return [((str(m), str(d), float(s)), g)
                for (m, d, s), g in df.groupby(["model", "defense", "sigma"], sort=True)]


# ------------------------------------------------------------------ report
@dataclass(frozen=True)
class ReportOptions:
    """Settings of the statistics shown in a report."""

    confidence: float = 0.95
    """Level of the Clopper-Pearson intervals and of the beyond-certificate bands."""
    bins: int = 10
    """Quantile bins of eps_x in the guarantee-shape figure."""
    interval: str = "t"
    """Beyond-certificate band: ``"t"`` or ``"bootstrap"``."""
    seed: int = 0
    """Seed of the bootstrap."""


@dataclass
class StudyOutput:
    """Tables and figures of one study's report section.  ``tables`` are shown in the HTML
    page; ``details`` (per-image tables) are written as CSV/Markdown only."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    details: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------------- study
@dataclass(frozen=True)
class NoConfig:
    """A study without settings of its own."""


class Study:
    """Base class of the studies (see the module docstring); subclasses override what they do."""

    name: ClassVar[str]
    title: ClassVar[str] = ""
    summary_text: ClassVar[str] = ""
    tables: ClassVar[tuple[type[Row], ...]] = ()
    Config: ClassVar[type] = NoConfig
    stage: ClassVar[str | None] = None
    """``"certify"``: run inside the certify study's units (:meth:`on_certified`)."""
    default: ClassVar[bool] = True
    """Whether ``verify`` runs it unless the config's ``studies`` says otherwise."""

    def units(self, plan: StudyPlan) -> list[Unit]:
        """The study's units of work for a run (none by default)."""
        return []

    def run(self, unit: Unit, ws: StudyWorkspace) -> list[Record]:
        """The rows of one unit."""
        raise NotImplementedError(f"study {self.name!r} has no units of its own")

    def run_stage(self, unit: Unit, ws: StudyWorkspace) -> tuple[list[Record], Any]:
        """The rows of one unit and what it hands to the studies staged after it (None: nothing).

        The runner (:func:`robustbench_iqa.runner.executor.run_unit`) calls this and then the
        studies with ``stage = <this study's name>`` on the handed-over value, in registry order;
        a study never dispatches another.  Default: :meth:`run`, handing nothing over."""
        return self.run(unit, ws), None

    def on_certified(self, batch: CertifiedBatch, ws: StudyWorkspace) -> list[Record]:
        """Rows computed from a freshly certified batch (``stage = "certify"`` studies)."""
        return []

    def checks(self, data: RunData, cfg: RunConfig) -> list[Check]:
        return []

    def summary(self, data: RunData, cfg: RunConfig) -> dict[Group, dict[str, Any]]:
        """Headline numbers per (model, defense, sigma) for the gate's summary table."""
        return {}

    def report(self, data: RunData, options: ReportOptions) -> StudyOutput | None:
        """The study's report section, or None if it has nothing to show."""
        return None


S = TypeVar("S", bound=type[Study])

STUDIES: Registry[Study] = Registry("study", package="robustbench_iqa.studies", plural="studies")
"""Every registered study; entries are the study classes (``STUDIES.create(name)`` builds one)."""

_INSTANCES: dict[str, Study] = {}


def register_study(cls: S) -> S:
    """Class decorator registering a :class:`Study` subclass under its ``name``."""
    STUDIES.add(cls.name, cls, description=cls.title, stage=cls.stage, default=cls.default,
                tables=tuple(t.table for t in cls.tables))
    return cls


def get_study(name: str) -> Study:
    """The study ``name`` (one instance per process)."""
    entry = STUDIES.entry(name)
    inst = _INSTANCES.get(name)
    if inst is None or type(inst) is not entry.factory():
        inst = STUDIES.create(name)
        _INSTANCES[name] = inst
    return inst


def list_studies(*, default: bool | None = None) -> list[str]:
    return STUDIES.names() if default is None else STUDIES.names(default=default)


def table_schemas() -> dict[str, type[Row]]:
    """Every table name of every registered study -> its row schema."""
    out: dict[str, type[Row]] = {}
    for name in list_studies():
        for schema in get_study(name).tables:
            out.setdefault(schema.table, schema)
    return out


def batched(items: Sequence[str], size: int) -> list[tuple[str, ...]]:
    """``items`` in consecutive batches of at most ``size``."""
    return [tuple(items[i:i + size]) for i in range(0, len(items), max(1, size))]

