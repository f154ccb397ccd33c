"""KonIQ-10k (Hosu et al., IEEE TIP 2020): 10,073 in-the-wild images with MOS.

The layout of the official download, as unpacked under ``root`` (each metadata file in
``root`` or in a subfolder of its own name):

* ``koniq10k_scores_and_distributions.csv`` (``metadata="scores"``): columns ``image_name``,
  ``MOS`` (1-5, higher = better), ``MOS_zscore`` (0-100), the rating distribution, ...;
* ``koniq10k_distributions_sets.csv`` (``metadata="sets"``, from github.com/subpic/koniq):
  ``image_name``, ``MOS`` rescaled to 0-100 (``(MOS - 1) * 25``; KonCept512 was trained on
  it) and ``set``, the official split (``training`` 7058, ``validation`` 1000, ``test`` 2015);
* the images in ``512x384/`` or ``1024x768/`` (also accepted one level down, as the zips
  unpack: ``koniq10k_512x384/512x384/``, ``koniq10k_1024x768/1024x768/``, or a plain
  ``images/``).  ``512x384`` is preferred when both exist: it is the working size of the
  FS-IQA study.

Options: ``score_column`` (a score column of the chosen file), ``split`` (``"all"``, or an
official set: ``"training"``/``"train"``, ``"validation"``, ``"test"``; it needs the sets
file), ``metadata`` (``"scores"``, ``"sets"``, or None: the sets file when an official
split is asked for or the scores file is absent, the scores file otherwise).  All are
recorded in :meth:`IQADataset.describe`.  No-reference: every image is its own group, so
:meth:`IQADataset.split` (the seeded 80/20 split) is a plain random split by seed.
"""

from __future__ import annotations

from pathlib import Path

from robustbench_iqa.data.base import IQADataset, IQASample
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
from robustbench_iqa.errors import InputError
from robustbench_iqa.registry import did_you_mean

CSV_NAME = "koniq10k_scores_and_distributions.csv"
SETS_NAME = "koniq10k_distributions_sets.csv"
METADATA = {"scores": CSV_NAME, "sets": SETS_NAME}
IMAGE_DIRS: tuple[str, ...] = (
    "512x384", "koniq10k_512x384/512x384", "1024x768", "koniq10k_1024x768/1024x768", "images",
)
SCORE_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "scores": {"MOS": (1.0, 5.0), "MOS_zscore": (0.0, 100.0)},
    "sets": {"MOS": (0.0, 100.0)},
}
SPLITS: dict[str, str | None] = {"all": None, "training": "training", "train": "training",
                                 "validation": "validation", "test": "test"}


def find_metadata(root: Path, filename: str) -> Path | None:
    return next((p for p in (root / filename, root / Path(filename).stem / filename) if p.is_file()), None)


def find_images(root: Path) -> Path:
    images = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
    if images is None:
        raise InputError(f"dataset 'koniq10k': no image folder in {root}; expected one of {list(IMAGE_DIRS)}")
    return images


def find_koniq_files(root: Path, metadata: str = "scores") -> tuple[Path, Path]:
    """(metadata CSV path, image folder) under ``root``, trying the known layouts."""
    filename = METADATA[metadata]
    csv_path = find_metadata(root, filename)
    if csv_path is None:
        looked = [str(root / filename), str(root / Path(filename).stem / filename)]
        raise InputError(f"dataset 'koniq10k': {filename} not found in {root} (looked at {looked})")
    return csv_path, find_images(root)


def _choose_metadata(root: Path, metadata: str | None, official: str | None) -> str:
    if metadata is not None:
        if metadata not in METADATA:
            raise InputError(f"koniq10k metadata must be one of {list(METADATA)} or None, got {metadata!r}")
        if official is not None and metadata != "sets":
            raise InputError(f"koniq10k: the official split is in {SETS_NAME} (metadata='sets'), "
                             f"not in {METADATA[metadata]}")
        return metadata
    if official is not None or (find_metadata(root, CSV_NAME) is None and find_metadata(root, SETS_NAME)):
        return "sets"
    return "scores"


@register_dataset("koniq10k", references=False,
                  description="KonIQ-10k (NR): root with the scores CSV (or the sets CSV, official split) "
                              "and 512x384/ or 1024x768/")
def koniq10k(
    *,
    root: Path | str | None,
    size: tuple[int, int] | None = PAPER_SIZE,
    resize: Resize | str = Resize.RESIZE,
    score_column: str = "MOS",
    split: str = "all",
    metadata: str | None = None,
) -> IQADataset:
    """KonIQ-10k from ``root`` (see the module docstring for ``score_column``, ``split``, ``metadata``)."""
    if split not in SPLITS:
        raise InputError(f"koniq10k split must be one of {list(SPLITS)}, got {split!r}{did_you_mean(split, list(SPLITS))}")
    official = SPLITS[split]
    base = require_root(root, "koniq10k")
    which = _choose_metadata(base, metadata, official)
    ranges = SCORE_RANGES[which]
    if score_column not in ranges:
        raise InputError(f"koniq10k score_column must be one of {list(ranges)} in {METADATA[which]}, "
                         f"got {score_column!r}{did_you_mean(score_column, list(ranges))}")
    csv_path, images = find_koniq_files(base, which)
    columns = ("image_name", score_column) + (("set",) if which == "sets" else ())
    table = read_table(csv_path, columns, dataset="koniq10k")
    if official is not None:
        sets = sorted({str(v).strip() for v in table["set"]})
        table = table[[str(v).strip() == official for v in table["set"]]]
        if len(table) == 0:
            raise InputError(f"dataset 'koniq10k': no image of set {official!r} in {csv_path} (sets: {sets})")
    scores = numeric_column(table, score_column, path=csv_path, dataset="koniq10k")
    names = [str(v).strip() for v in table["image_name"]]
    samples = tuple(
        IQASample(name=n, image=images / n, score=float(s), ref=None, group=None)
        for n, s in zip(names, scores)
    )
    check_files_exist((s.image for s in samples), dataset="koniq10k", where=images)
    return IQADataset(
        name="koniq10k", samples=samples, higher_better=True, score_range=ranges[score_column],
        size=working_size(size), resize=resize_policy(resize), root=base,
        extra={"csv": str(csv_path), "images": str(images), "score_column": score_column,
               "official_split": official or "all"},
    )
