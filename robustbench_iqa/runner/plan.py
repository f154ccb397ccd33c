"""The plan of a run: which inputs, identified by content, and every study's units of work.

An input's identity is its name and a SHA-256 of the bytes of its image file (and,
for a full-reference model, of its reference file): ``"name#0123456789ab"``.  Two
inputs that share a name but differ in content (the same distorted image paired
with another reference) are different rows; a file edited between a run and its
resume is a different input, not a resumed one.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from robustbench_iqa.errors import InputError

if TYPE_CHECKING:
    from robustbench_iqa.data.base import IQADataset
    from robustbench_iqa.runner.config import VerifyConfig
    from robustbench_iqa.runner.workspace import Workspace
    from robustbench_iqa.studies.base import Unit


def file_digest(*paths: Path | None) -> str:
    """SHA-256 over the bytes of ``paths`` (None entries mark an absent reference)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(b"\x00" if p is None else b"\x01")
        if p is None:
            continue
        try:
            with Path(p).open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except OSError as exc:
            raise InputError(f"cannot read {p}: {exc.strerror or exc}") from None
    return h.hexdigest()


def input_id(name: str, image: Path, ref: Path | None = None) -> str:
    """``"name#<12 hex digits>"``: the input's name and a hash of its image (and reference) bytes."""
    return f"{name}#{file_digest(image, ref)[:12]}"


@dataclass(frozen=True)
class PlannedInput:
    """One input of a run: its identity, index in the (split, limited) dataset, name, label."""

    id: str
    index: int
    name: str
    target: float


def planned_inputs(ds: IQADataset, *, full_reference: bool) -> tuple[PlannedInput, ...]:
    """The inputs of ``ds`` for a model of this mode (FR identities include the reference)."""
    out = []
    seen: set[str] = set()
    for i, s in enumerate(ds.samples):
        if full_reference and s.ref is None:
            raise InputError(f"{s.name}: the dataset has no reference image for a full-reference model")
        pid = input_id(s.name, s.image, s.ref if full_reference else None)
        if pid in seen:
            continue  # the same input listed twice: one row
        seen.add(pid)
        out.append(PlannedInput(pid, i, s.name, float(s.score)))
    return tuple(out)


@dataclass
class Plan:
    """The inputs per model and the units of every active study of a run."""

    cfg: VerifyConfig
    inputs: dict[str, tuple[PlannedInput, ...]]

    @classmethod
    def build(cls, cfg: VerifyConfig, ws: Workspace) -> Plan:
        ds = ws.dataset()
        if len(ds) == 0:
            raise InputError(f"verify: dataset {cfg.dataset!r} ({cfg.split}) has no images")
        inputs = {}
        for name in cfg.models:
            model = ws.model(name)
            if model.full_reference and not ds.has_references:
                raise InputError(f"model {name!r} is full-reference but dataset {ds.name!r} has no references")
            inputs[name] = planned_inputs(ds, full_reference=model.full_reference)
        ws.inputs.update(inputs)
        return cls(cfg, inputs)

    def images(self, model: str, limit: int | None = None) -> list[str]:
        ids = [p.id for p in self.inputs[model]]
        return ids if limit is None else ids[:limit]

    def units(self) -> list[Unit]:
        """Every unit of every active study, in a deterministic order."""
        from robustbench_iqa.studies.base import get_study

        out: list[Unit] = []
        for name in self.cfg.active_studies():
            out += get_study(name).units(self)
        keys = [u.key for u in out]
        if len(set(keys)) != len(keys):
            raise AssertionError("two units share a key")
        return out
