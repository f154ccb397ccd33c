"""A defense's own options in the verify config: ``[tool.robustbench_iqa.verify.defense.<name>]``.

Each table sets options the defense declares (:mod:`robustbench_iqa.certify.options`:
its factory's keywords and its ``certify`` settings), checked with a did-you-mean on an
unknown key::

    [tool.robustbench_iqa.verify.defense.cert-reg]
    trim = 0.2

A table whose name is not a registered defense is a *variant*: it names the defense it
configures with ``defense = "..."``, and its name goes into ``defenses`` like any other,
so two settings of one defense run (and are gated) side by side::

    [tool.robustbench_iqa.verify]
    defenses = ["rs-reg", "rs-reg-radius"]

    [tool.robustbench_iqa.verify.defense.rs-reg-radius]
    defense = "rs-reg"
    certificate = "radius"

Rows, checks and ``checkpoints`` keys use the name listed in ``defenses`` (the variant's).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from robustbench_iqa.errors import InputError

TABLE = "defense"
"""The key of the sub-table of tables (``[verify.defense.<name>]``)."""


@dataclass(frozen=True)
class DefenseTable:
    """The configured options of one defense name of the run."""

    name: str
    """The name listed in ``defenses`` (and recorded in rows)."""
    defense: str
    """The registered defense it builds."""
    build: dict[str, Any] = field(default_factory=dict)
    """Keywords of the defense's factory."""
    certify: dict[str, Any] = field(default_factory=dict)
    """Settings of its ``certify`` (over the run-wide ``tau`` and ``eps``)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"defense": self.defense} if self.defense != self.name else {}
        return {**out, **self.build, **self.certify}


def parse_tables(raw: Any, *, where: str) -> dict[str, DefenseTable]:
    """``[where.defense.<name>]`` tables, each checked against the options of its defense."""
    from robustbench_iqa.certify.defense import DEFENSES
    from robustbench_iqa.certify.options import split_options
    from robustbench_iqa.registry import did_you_mean

    if not isinstance(raw, Mapping):
        raise InputError(f"`{where}.{TABLE}` must hold one table per defense ([{where}.{TABLE}.<name>]), "
                         f"got {raw!r}")
    out: dict[str, DefenseTable] = {}
    for name, values in raw.items():
        at = f"{where}.{TABLE}.{name}"
        if not isinstance(values, Mapping):
            raise InputError(f"`{at}` must be a table of the defense's options, got {values!r}")
        values = dict(values)
        base = values.pop("defense", name)
        if not isinstance(base, str) or base not in DEFENSES:
            hint = did_you_mean(str(base), DEFENSES.names())
            raise InputError(f"`{at}`: {base!r} is no registered defense{hint}; a table of another name "
                             f"configures a variant and names its defense (defense = \"rs-reg\")")
        opts = split_options(base, values, where=at)
        out[str(name)] = DefenseTable(str(name), base, opts.build, opts.certify)
    return out


def table_for(tables: Mapping[str, DefenseTable], name: str) -> DefenseTable:
    """The table of defense name ``name`` (no options if it has none)."""
    return tables.get(name) or DefenseTable(name, name)
