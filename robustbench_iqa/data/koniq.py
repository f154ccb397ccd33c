"""KonIQ-10k (Hosu et al., IEEE TIP 2020): 10,073 in-the-wild images with MOS.

The layout of the official download, as unpacked under ``root`` (each metadata file in
``root`` or in a subfolder of its own name):

* ``koniq10k_scores_and_distributions.csv`` (the scores file): columns ``image_name``,
  ``MOS`` (the mean opinion score on the 1-5 rating scale, higher = better),
  ``MOS_zscore`` (the MOS computed from per-rater z-scores, rescaled to 0-100), the rating
  distribution ``c1`` ... ``c5``, ``c_total``, ``SD``;
* ``koniq10k_distributions_sets.csv`` (the sets file, from github.com/subpic/koniq):
  ``image_name``, the rating distribution, a column *named* ``MOS`` that holds the 0-100
  z-score MOS (the scores file's ``MOS_zscore``, not the 1-5 MOS and not ``(MOS - 1) * 25``;
  KonCept512 was trained on it) and ``set``, the official split (``training`` 7,058,
  ``validation`` 1,000, ``test`` 2,015);
* the images in ``512x384/`` or ``1024x768/`` (also accepted one level down, as the zips
  unpack: ``koniq10k_512x384/512x384/``, ``koniq10k_1024x768/1024x768/``, or a plain
  ``images/``).  ``512x384`` is preferred when both exist: it is the working size of the
  FS-IQA study.

Targets (``score_column``) are named for what they are, whichever file holds them:

* ``"MOS"``: the 1-5 MOS, read from the scores file's ``MOS`` column;
* ``"MOS_zscore"``: the 0-100 z-score MOS, read from the scores file's ``MOS_zscore``
  column, or, when only the sets file is there, from the sets file's ``MOS`` column;
* None (default): ``"MOS"`` when the scores file is present, else ``"MOS_zscore"`` (the only
  target the sets file has).  The target chosen is recorded by its name and range
  (``score_column``, ``score_range`` in :meth:`IQADataset.describe`), never as a bare "MOS".

Every target is checked against the file: its values must lie in its range (a 1-5 column
is not a 0-100 one), and a target a file cannot give is refused with the file that has it.
When both files are present the targets come from the scores file and the sets file gives
the split; a sets file whose ``MOS`` is not the scores file's ``MOS_zscore`` (within
:data:`ZSCORE_TOLERANCE`) or that lacks some images is reported as a
:class:`~robustbench_iqa.errors.DataWarning` (images without a set are in no part).

Split: when the sets file is present every image carries its official set, and
:meth:`IQADataset.select` (every command's ``--split``, the verify config's ``split``,
``train``) picks the official ``training`` / ``validation`` / ``test`` set; without the sets
file the dataset has no official split and a seeded 80/20 split is made (said in the run's
record).  The loader's own ``split`` option (``"all"`` or an official set) does the same
selection at load time.  No-reference: every image is its own group.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from robustbench_iqa.data.base import IQADataset, IQASample, Split, parse_split
from robustbench_iqa.data.csv_dataset import (
    PAPER_SIZE,
    check_files_exist,
    numeric_column,
    read_table,
    require_root,
    resize_policy,
    working_size,
)
from robustbench_iqa.data.images import Resize
from robustbench_iqa.data.registry import register_dataset
from robustbench_iqa.errors import DataWarning, InputError
from robustbench_iqa.registry import did_you_mean

CSV_NAME = "koniq10k_scores_and_distributions.csv"
SETS_NAME = "koniq10k_distributions_sets.csv"
IMAGE_DIRS: tuple[str, ...] = (
    "512x384", "koniq10k_512x384/512x384", "1024x768", "koniq10k_1024x768/1024x768", "images",
)
SCORE_RANGES: dict[str, tuple[float, float]] = {"MOS": (1.0, 5.0), "MOS_zscore": (0.0, 100.0)}
"""Each target and its range."""
SOURCE_COLUMN: dict[tuple[str, str], str] = {
    ("scores", "MOS"): "MOS", ("scores", "MOS_zscore"): "MOS_zscore", ("sets", "MOS_zscore"): "MOS",
}
"""(file, target) -> the column of that file holding the target."""
OFFICIAL_SETS: dict[str, str] = {"train": "training", "validation": "validation", "test": "test"}
"""Split -> the value of the sets file's ``set`` column."""
ZSCORE_TOLERANCE = 0.5
"""Largest accepted |sets file ``MOS`` - scores file ``MOS_zscore``| (0-100 scale): far above
rounding, far below the up to 16 points between the z-score MOS and ``(MOS - 1) * 25``."""


def find_metadata(root: Path, filename: str) -> Path | None:
    return next((p for p in (root / filename, root / Path(filename).stem / filename) if p.is_file()), None)


def find_images(root: Path) -> Path:
    images = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
    if images is None:
        raise InputError(f"dataset 'koniq10k': no image folder in {root}; expected one of {list(IMAGE_DIRS)}")
    return images


def _names(table: pd.DataFrame) -> list[str]:
    return [str(v).strip() for v in table["image_name"]]


def _checked(values: np.ndarray, target: str, *, path: Path, column: str) -> np.ndarray:
    lo, hi = SCORE_RANGES[target]
    bad = np.flatnonzero((values < lo) | (values > hi))
    if bad.size:
        raise InputError(f"dataset 'koniq10k': column {column!r} of {path} should hold {target} in [{lo:g}, {hi:g}] "
                         f"but has {bad.size} value(s) outside, e.g. {values[bad[0]]:g} at data row {bad[0] + 1}")
    return values


def _read_scores(scores: Path | None, sets: Path | None, target: str) -> tuple[list[str], np.ndarray, Path, str]:
    """(names, target values, file read, column read), the values checked against their range."""
    which, path = ("scores", scores) if scores is not None else ("sets", sets)
    assert path is not None
    column = SOURCE_COLUMN.get((which, target))
    if column is None:
        raise InputError(f"dataset 'koniq10k': score_column {target!r} (the 1-5 MOS) is in {CSV_NAME}, which is "
                         f"not under the root; {SETS_NAME} holds only the 0-100 z-score MOS: "
                         f"score_column='MOS_zscore'")
    table = read_table(path, ("image_name", column), dataset="koniq10k")
    values = numeric_column(table, column, path=path, dataset="koniq10k")
    return _names(table), _checked(values, target, path=path, column=column), path, column


def _read_sets(sets: Path, names: list[str], scores: Path | None) -> list[str | None]:
    """The official set of each of ``names`` from the sets file (None where it lists no set).

    With the scores file present (the targets come from it), the sets file is checked against it:
    images it does not list, and a ``MOS`` column that is not the scores file's ``MOS_zscore``,
    are reported as a :class:`~robustbench_iqa.errors.DataWarning` (the numbers read do not change).
    """
    table = read_table(sets, ("image_name", "set"), dataset="koniq10k")
    label = dict(zip(_names(table), (str(v).strip() for v in table["set"])))
    unknown = sorted(set(label.values()) - set(OFFICIAL_SETS.values()))
    if unknown:
        raise InputError(f"dataset 'koniq10k': column 'set' of {sets} has values {unknown[:5]}; expected "
                         f"{sorted(OFFICIAL_SETS.values())}")
    if scores is None:
        return [label.get(n) for n in names]
    missing = [n for n in names if n not in label]
    if missing:
        warnings.warn(f"koniq10k: {len(missing)} image(s) of {scores.name} have no set in {sets.name} "
                      f"(e.g. {missing[:3]}); they are in no part of the official split", DataWarning, stacklevel=3)
    if "MOS" in table.columns:  # the sets file's MOS is the scores file's MOS_zscore: check it is
        z = dict(zip(names, _read_scores(scores, None, "MOS_zscore")[1]))
        sets_mos = pd.to_numeric(table["MOS"], errors="coerce").to_numpy(dtype=float)
        diff = [(abs(float(m) - z[n]), n, float(m)) for n, m in zip(_names(table), sets_mos) if n in z]
        worst = max(diff, default=(0.0, "", 0.0))
        if not worst[0] <= ZSCORE_TOLERANCE:
            warnings.warn(f"koniq10k: column 'MOS' of {sets.name} should equal column 'MOS_zscore' of {scores.name} "
                          f"(the 0-100 z-score MOS) but differs by up to {worst[0]:.4g} ({worst[1]}: {worst[2]:g} vs "
                          f"{z[worst[1]]:g}); the targets are read from {scores.name}, the sets file gives only the "
                          f"split: check that both files are of the same KonIQ-10k release", DataWarning, stacklevel=3)
    return [label.get(n) for n in names]


@register_dataset("koniq10k", references=False,
                  description="KonIQ-10k (NR): root with the scores CSV and/or the sets CSV (official split) "
                              "and 512x384/ or 1024x768/")
def koniq10k(
    *,
    root: Path | str | None,
    size: tuple[int, int] | None = PAPER_SIZE,
    resize: Resize | str = Resize.RESIZE,
    score_column: str | None = None,
    split: str = "all",
) -> IQADataset:
    """KonIQ-10k from ``root`` (see the module docstring for ``score_column`` and ``split``)."""
    if score_column is not None and score_column not in SCORE_RANGES:
        raise InputError(f"koniq10k score_column must be one of {list(SCORE_RANGES)}, "
                         f"got {score_column!r}{did_you_mean(score_column, list(SCORE_RANGES))}")
    part = parse_split(split)
    base = require_root(root, "koniq10k")
    scores, sets = find_metadata(base, CSV_NAME), find_metadata(base, SETS_NAME)
    if scores is None and sets is None:
        looked = [str(base / f) for f in (CSV_NAME, SETS_NAME)]
        raise InputError(f"dataset 'koniq10k': neither {CSV_NAME} nor {SETS_NAME} found in {base} "
                         f"(looked at {looked} and a subfolder of each file's name)")
    if score_column is None:
        score_column = "MOS" if scores is not None else "MOS_zscore"
    if part is not Split.ALL and sets is None:
        raise InputError(f"dataset 'koniq10k': the official split is in {SETS_NAME}, not found in {base}")
    images = find_images(base)
    names, values, path, column = _read_scores(scores, sets, score_column)
    labels = _read_sets(sets, names, scores) if sets is not None else [None] * len(names)
    samples = tuple(
        IQASample(name=n, image=images / n, score=float(s), ref=None, group=None, subset=lab)
        for n, s, lab in zip(names, values, labels)
    )
    check_files_exist((s.image for s in samples), dataset="koniq10k", where=images)
    ds = IQADataset(
        name="koniq10k", samples=samples, higher_better=True, score_range=SCORE_RANGES[score_column],
        size=working_size(size), resize=resize_policy(resize), root=base,
        extra={"csv": str(path), "images": str(images), "score_column": score_column, "score_file_column": column,
               **({"sets_csv": str(sets)} if sets is not None else {})},
        official_split=dict(OFFICIAL_SETS) if sets is not None else {},
    )
    return ds.select(part)
