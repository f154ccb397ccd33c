"""The plan of a run: which inputs, identified by content, and every study's units of work.

An input's identity is its name and a SHA-256 of the bytes of its image file (and,
for a full-reference model, of its reference file): ``"name#0123456789ab"``.  Two
inputs that share a name but differ in content (the same distorted image paired
with another reference) are different rows; a file edited between a run and its
resume is a different input, not a resumed one.  The same input listed more than once
(one file twice in a CSV, perhaps with two ratings) keeps every listing: its n-th
repeat is ``"name#0123456789ab~n"`` (:class:`InputIds`), and the run says so.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from robustbench_iqa.errors import InputError
from robustbench_iqa.studies.base import Unit, get_study

if TYPE_CHECKING:
    from robustbench_iqa.data.base import IQADataset
    from robustbench_iqa.runner.config import VerifyConfig
    from robustbench_iqa.runner.workspace import Workspace


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


class InputIds:
    """Identities unique within one run: the n-th listing (n >= 2) of the same input is
    ``"<id>~n"``, so that no listing is taken for another one (or for a resumed row).

    ``repeated`` maps the name of every input listed more than once to its count."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}
        self.repeated: dict[str, int] = {}

    def __call__(self, pid: str, name: str) -> str:
        n = self._seen.get(pid, 0) + 1
        self._seen[pid] = n
        if n == 1:
            return pid
        self.repeated[name] = max(n, self.repeated.get(name, 0))
        return f"{pid}~{n}"

    def note(self) -> str | None:
        """One line naming the inputs listed more than once (None if there is none)."""
        if not self.repeated:
            return None
        shown = ", ".join(f"{k} ({v} times)" for k, v in list(self.repeated.items())[:5])
        more = f" and {len(self.repeated) - 5} more" if len(self.repeated) > 5 else ""
        return (f"{len(self.repeated)} input(s) listed more than once, each listing kept as its own row: "
                f"{shown}{more}")


@dataclass(frozen=True)
class PlannedInput:
    """One input of a run: its identity, index in the (split, limited) dataset, name, label."""

    id: str
    index: int
    name: str
    target: float


def planned_inputs(ds: IQADataset, *, full_reference: bool,
                   ids: InputIds | None = None) -> tuple[PlannedInput, ...]:
    """The inputs of ``ds`` for a model of this mode (FR identities include the reference); an input
    listed twice is two inputs (``ids`` records the repeats)."""
    out = []
    ids = ids if ids is not None else InputIds()
    for i, s in enumerate(ds.samples):
        if full_reference and s.ref is None:
            raise InputError(f"{s.name}: the dataset has no reference image for a full-reference model")
        pid = ids(input_id(s.name, s.image, s.ref if full_reference else None), s.name)
        out.append(PlannedInput(pid, i, s.name, float(s.score)))
    return tuple(out)


def check_dataset_sizes(ds: IQADataset, model: object, name: str) -> None:
    """Refuse a dataset whose images ``model`` cannot score (below its minimum size): at the
    dataset's working size, or, at native size, each image's own (read from its header)."""
    from robustbench_iqa.data.decode import image_size
    from robustbench_iqa.validation import check_image_size, min_image_size

    smallest = min_image_size(model)
    if ds.size is not None:
        check_image_size(ds.size, minimum=smallest, what=f"dataset {ds.name!r} at its working size",
                         model=name)
        return
    for s in ds.samples:
        check_image_size(image_size(s.image), minimum=smallest, what=str(s.image), model=name)


@dataclass
class Plan:
    """The inputs per model and the units of every active study of a run."""

    cfg: VerifyConfig
    inputs: dict[str, tuple[PlannedInput, ...]]
    notes: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, cfg: VerifyConfig, ws: Workspace) -> Plan:
        ds = ws.dataset()
        if len(ds) == 0:
            raise InputError(f"verify: dataset {cfg.dataset!r} ({cfg.split}) has no images")
        inputs = {}
        notes: list[str] = []
        for name in cfg.models:
            model = ws.model(name)
            if model.full_reference and not ds.has_references:
                raise InputError(f"model {name!r} is full-reference but dataset {ds.name!r} has no references")
            check_dataset_sizes(ds, model, name)
            ids = InputIds()
            inputs[name] = planned_inputs(ds, full_reference=model.full_reference, ids=ids)
            note = ids.note()
            if note is not None and note not in notes:
                notes.append(note)
        ws.inputs.update(inputs)
        return cls(cfg, inputs, notes)

    def images(self, model: str, limit: int | None = None) -> list[str]:
        ids = [p.id for p in self.inputs[model]]
        return ids if limit is None else ids[:limit]

    def units(self) -> list[Unit]:
        """Every unit of every active study, in a deterministic order."""
        out: list[Unit] = []
        for name in self.cfg.active_studies():
            out += get_study(name).units(self)
        keys = [u.key for u in out]
        if len(set(keys)) != len(keys):
            raise AssertionError("two units share a key")
        return out
