"""The generic ``csv`` dataset, and the table checks shared by the file-based datasets.

A CSV file with a column ``image`` (a path), a score column (``score_column``, default
``score``; a number) and
optionally ``ref`` (the reference image, for FR models) and ``group`` (the
source content, kept on one side of a split; default: the reference, else the
image) and ``set`` (the dataset's own split: ``train``/``training``, ``validation``/``val``,
``test`` on every row; then ``--split`` picks that set instead of a seeded split).  Paths are
relative to the folder of the CSV.  ``root`` is the CSV file
itself or a folder holding exactly one ``*.csv``.

Every problem is an :class:`~robustbench_iqa.errors.InputError` naming it: a
missing root or CSV, missing columns, non-numeric scores, missing image files
(all checked at construction, listing the first few), unreadable images (at
load).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from robustbench_iqa.data.base import IQADataset, IQASample
from robustbench_iqa.data.images import Resize
from robustbench_iqa.data.registry import register_dataset
from robustbench_iqa.errors import InputError

PAPER_SIZE: tuple[int, int] = (384, 512)
"""Working size (H, W) of the FS-IQA study (KonIQ-10k and KADID-10k: 384 x 512)."""


def require_root(root: Path | str | None, dataset: str) -> Path:
    if root is None:
        raise InputError(f"dataset {dataset!r} needs --root, the folder where it is stored")
    p = Path(root).expanduser()
    if not p.exists():
        raise InputError(f"dataset {dataset!r}: root not found: {p}")
    return p


def read_table(path: Path, columns: Sequence[str], *, dataset: str) -> pd.DataFrame:
    """Read a CSV and check that ``columns`` are present (whitespace around names ignored)."""
    if not path.is_file():
        raise InputError(f"dataset {dataset!r}: CSV file not found: {path}")
    try:
        table = pd.read_csv(path, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise InputError(f"dataset {dataset!r}: cannot parse CSV {path}: {str(exc).splitlines()[0]}") from None
    header = _header(path)
    dup = sorted({c for c in header if header.count(c) > 1})
    if dup:
        raise InputError(f"dataset {dataset!r}: CSV {path} names column(s) {dup} more than once in its header; "
                         f"name each column once")
    table.columns = [str(c).strip() for c in table.columns]
    if len(table.columns) and len(table):
        again = [i for i, row in enumerate(table.astype(str).itertuples(index=False))
                 if [str(v).strip() for v in row] == list(table.columns)]
        if again:
            raise InputError(f"dataset {dataset!r}: CSV {path} repeats its header line at data row {again[0] + 1}"
                             f"{f' (and {len(again) - 1} more)' if len(again) > 1 else ''}: were two files joined? "
                             f"keep one header line")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputError(
            f"dataset {dataset!r}: CSV {path} lacks column(s) {missing}; found {list(table.columns)}"
        )
    if len(table) == 0:
        raise InputError(f"dataset {dataset!r}: CSV {path} has no rows")
    return table


def _header(path: Path) -> list[str]:
    """The names of the CSV's first line, as written (pandas renames a repeated name ``x.1``)."""
    import csv

    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            first = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []
    return [c.strip() for c in first]


def numeric_column(table: pd.DataFrame, column: str, *, path: Path, dataset: str) -> np.ndarray:
    """The column as finite floats; the first bad row is named otherwise."""
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"dataset {dataset!r}: CSV {path} has {bad.size} non-numeric value(s) in column {column!r}, "
            f"first at data row {i + 1}: {table[column].iloc[i]!r}"
        )
    return values


def check_files_exist(paths: Iterable[Path], *, dataset: str, where: Path) -> None:
    """Raise one InputError listing the first few missing files (and how many)."""
    missing = sorted({str(p) for p in paths if not p.is_file()})
    if missing:
        shown = ", ".join(missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise InputError(f"dataset {dataset!r}: {len(missing)} image file(s) missing under {where}: {shown}{more}")


def working_size(size: tuple[int, int] | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if len(size) != 2 or any(int(s) < 1 for s in size):
        raise InputError(f"image size must be (height, width) with positive entries, got {tuple(size)}")
    return (int(size[0]), int(size[1]))


def resize_policy(resize: Resize | str) -> Resize:
    try:
        return Resize(resize)
    except ValueError:
        raise InputError(
            f"unknown resize policy {resize!r}; choose one of {[r.value for r in Resize]}"
        ) from None


def find_csv(root: Path, *, dataset: str) -> Path:
    """``root`` if it is a file, else the single ``*.csv`` in the folder ``root``."""
    if root.is_file():
        return root
    found = sorted(root.glob("*.csv"))
    if len(found) != 1:
        raise InputError(
            f"dataset {dataset!r}: expected one *.csv in {root}, found {len(found)}"
            + (f" ({', '.join(p.name for p in found[:5])}); pass the CSV file as root" if found else "")
        )
    return found[0]


@register_dataset("csv", references=None,
                  description="generic: a CSV with columns image, score[, ref, group]; paths relative to it")
def csv_dataset(
    *,
    root: Path | str | None,
    size: tuple[int, int] | None = PAPER_SIZE,
    resize: Resize | str = Resize.RESIZE,
    higher_better: bool = True,
    score_column: str = "score",
) -> IQADataset:
    """A dataset described by a CSV file (see the module docstring for the format)."""
    path = find_csv(require_root(root, "csv"), dataset="csv")
    table = read_table(path, ("image", score_column), dataset="csv")
    scores = numeric_column(table, score_column, path=path, dataset="csv")
    base = path.parent
    has_ref = "ref" in table.columns
    has_group = "group" in table.columns
    images = [str(v).strip() for v in table["image"]]
    refs = [
        None if not has_ref or pd.isna(v) or not str(v).strip() else str(v).strip()
        for v in (table["ref"] if has_ref else [None] * len(table))
    ]
    groups = [
        str(g) if has_group and not pd.isna(g) else r
        for g, r in zip(table["group"] if has_group else [None] * len(table), refs)
    ]
    sets = _own_sets(table, path)
    samples = [
        IQASample(name=img, image=base / img, score=float(sc), ref=base / r if r else None, group=g, subset=st)
        for img, sc, r, g, st in zip(images, scores, refs, groups, sets)
    ]
    check_files_exist(
        [s.image for s in samples] + [s.ref for s in samples if s.ref is not None], dataset="csv", where=base
    )
    return IQADataset(
        name="csv", samples=tuple(samples), higher_better=bool(higher_better),
        score_range=(float(scores.min()), float(scores.max())),
        size=working_size(size), resize=resize_policy(resize), root=base,
        extra={"csv": str(path), "score_column": score_column},
        official_split={p: p for p in ("train", "validation", "test")} if sets[0] is not None else {},
    )


def _own_sets(table: pd.DataFrame, path: Path) -> list[str | None]:
    """The ``set`` column as split names (``training`` -> ``train``, ``val`` -> ``validation``), or Nones."""
    from robustbench_iqa.data.base import SPLIT_ALIASES, Split

    if "set" not in table.columns:
        return [None] * len(table)
    names = {s.value: s.value for s in Split if s is not Split.ALL} | {k: v.value for k, v in SPLIT_ALIASES.items()}
    raw = [str(v).strip().lower() if not pd.isna(v) else "" for v in table["set"]]
    bad = sorted({v for v in raw if v not in names})
    if bad:
        raise InputError(f"dataset 'csv': column 'set' of {path} has values {bad[:5]}; expected train, "
                         "validation or test on every row")
    return [names[v] for v in raw]
