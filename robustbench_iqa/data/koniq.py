"""KonIQ-10k (Hosu et al., IEEE TIP 2020): 10,073 in-the-wild images with MOS.

The layout of the official download, as unpacked under ``root``:

* ``koniq10k_scores_and_distributions.csv`` (in ``root`` or in a subfolder of
  the same name) with columns ``image_name``, ``MOS`` (1-5, higher = better)
  and ``MOS_zscore`` (0-100), among others;
* the images in ``1024x768/`` or ``512x384/`` (also accepted one level down, as
  the zips unpack: ``koniq10k_1024x768/1024x768/``, ``koniq10k_512x384/512x384/``,
  or a plain ``images/``).  ``512x384`` is preferred when both exist: it is the
  working size of the FS-IQA study.

No-reference: every image is its own group, so the 80/20 split of
:meth:`IQADataset.split` is a plain random split by seed.
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

CSV_NAME = "koniq10k_scores_and_distributions.csv"
IMAGE_DIRS: tuple[str, ...] = (
    "512x384", "koniq10k_512x384/512x384", "1024x768", "koniq10k_1024x768/1024x768", "images",
)
SCORE_RANGES = {"MOS": (1.0, 5.0), "MOS_zscore": (0.0, 100.0)}


def find_koniq_files(root: Path) -> tuple[Path, Path]:
    """(CSV path, image folder) under ``root``, trying the known layouts."""
    csvs = [root / CSV_NAME, root / "koniq10k_scores_and_distributions" / CSV_NAME]
    csv_path = next((p for p in csvs if p.is_file()), None)
    if csv_path is None:
        raise InputError(f"dataset 'koniq10k': {CSV_NAME} not found in {root} (looked at {[str(p) for p in csvs]})")
    images = next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), None)
    if images is None:
        raise InputError(f"dataset 'koniq10k': no image folder in {root}; expected one of {list(IMAGE_DIRS)}")
    return csv_path, images


@register_dataset("koniq10k", references=False,
                  description="KonIQ-10k (NR, MOS 1-5): root with the scores CSV and 1024x768/ or 512x384/")
def koniq10k(
    *,
    root: Path | str | None,
    size: tuple[int, int] | None = PAPER_SIZE,
    resize: Resize | str = Resize.RESIZE,
    score_column: str = "MOS",
) -> IQADataset:
    """KonIQ-10k from ``root``; ``score_column``: ``"MOS"`` (1-5) or ``"MOS_zscore"`` (0-100)."""
    if score_column not in SCORE_RANGES:
        raise InputError(f"koniq10k score_column must be one of {list(SCORE_RANGES)}, got {score_column!r}")
    base = require_root(root, "koniq10k")
    csv_path, images = find_koniq_files(base)
    table = read_table(csv_path, ("image_name", score_column), dataset="koniq10k")
    scores = numeric_column(table, score_column, path=csv_path, dataset="koniq10k")
    names = [str(v).strip() for v in table["image_name"]]
    samples = tuple(
        IQASample(name=n, image=images / n, score=float(s), ref=None, group=None)
        for n, s in zip(names, scores)
    )
    check_files_exist((s.image for s in samples), dataset="koniq10k", where=images)
    return IQADataset(
        name="koniq10k", samples=samples, higher_better=True, score_range=SCORE_RANGES[score_column],
        size=working_size(size), resize=resize_policy(resize), root=base,
        extra={"csv": str(csv_path), "images": str(images), "score_column": score_column},
    )
