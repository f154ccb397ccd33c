"""KADID-10k (Lin, Hosu and Saupe, QoMEX 2019): 81 references x 25 distortions x 5 levels.

The layout of the official ``kadid10k.zip``, unpacked under ``root`` (or under
``root/kadid10k``):

* ``dmos.csv`` with columns ``dist_img``, ``ref_img``, ``dmos`` (and ``var``).
  Despite its name, ``dmos`` is a degradation *category rating* on 1-5 where
  higher means better quality (the reference scores 5);
* ``images/`` holding the distorted images ``I01_01_01.png`` ... and the
  references ``I01.png`` ...

Full-reference: each sample carries its reference, and ``group`` = the
reference name.  KADID-10k publishes no official split, so :meth:`IQADataset.select`
(every command's ``--split``) makes the seeded 80/20 split by reference: the 81 references
are permuted by the split seed (default 0) and all distorted versions of a reference go to
one side (65 references, 8,125 images in train; 16 references, 2,000 images in test), so no
content leaks between train and test.  The run's record says so (``kind: seeded``, the seed,
the fraction, ``by: reference``).
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

CSV_NAME = "dmos.csv"
COLUMNS: tuple[str, ...] = ("dist_img", "ref_img", "dmos")


def find_kadid_folder(root: Path) -> Path:
    """The folder holding ``dmos.csv``: ``root`` or ``root/kadid10k``."""
    for folder in (root, root / "kadid10k"):
        if (folder / CSV_NAME).is_file():
            return folder
    raise InputError(f"dataset 'kadid10k': {CSV_NAME} not found in {root} or {root / 'kadid10k'}")


@register_dataset("kadid10k", references=True,
                  description="KADID-10k (FR, score 1-5): root with dmos.csv and images/")
def kadid10k(
    *,
    root: Path | str | None,
    size: tuple[int, int] | None = PAPER_SIZE,
    resize: Resize | str = Resize.RESIZE,
) -> IQADataset:
    """KADID-10k from ``root``; samples are (distorted, reference) pairs grouped by reference."""
    folder = find_kadid_folder(require_root(root, "kadid10k"))
    csv_path = folder / CSV_NAME
    images = folder / "images"
    if not images.is_dir():
        raise InputError(f"dataset 'kadid10k': image folder not found: {images}")
    table = read_table(csv_path, COLUMNS, dataset="kadid10k")
    scores = numeric_column(table, "dmos", path=csv_path, dataset="kadid10k")
    dist = [str(v).strip() for v in table["dist_img"]]
    refs = [str(v).strip() for v in table["ref_img"]]
    samples = tuple(
        IQASample(name=d, image=images / d, score=float(s), ref=images / r, group=Path(r).stem)
        for d, r, s in zip(dist, refs, scores)
    )
    check_files_exist(
        [s.image for s in samples] + sorted({images / r for r in refs}), dataset="kadid10k", where=images
    )
    return IQADataset(
        name="kadid10k", samples=samples, higher_better=True, score_range=(1.0, 5.0),
        size=working_size(size), resize=resize_policy(resize), root=folder,
        extra={"csv": str(csv_path), "images": str(images), "score_column": "dmos"},
    )
