"""What a score means: a quality (higher is better) or a distance (lower is better), and its range.

One convention for every score the suite shows or stores: a score keeps the orientation of
what produced it, and says it.  ``orientation`` is ``"quality"`` when a higher score means a
better image (MOS-like NR models, FS-IQA's smoothed score) and ``"distance"`` when a lower one
does (FR distances such as LPIPS, DISTS, DreamSim, and lower-is-better NR scores such as
NIQE); ``score_range`` is the nominal range of that scale.

For an FR model the two scores of one image therefore differ in orientation, by design: the
undefended model's own score is its distance (LPIPS: 0 for an image against itself), while
FS-IQA's score comes from a scorer trained on the dataset's subjective scores (KADID-10k's
``dmos`` column, 1-5, higher is better), so it is a quality on that scale.  Correlations with
the subjective scores (SRCC, PLCC) are signed so that a positive value means agreement
whatever the orientation (a distance is negated first), so both can be compared directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any


class Orientation(StrEnum):
    QUALITY = "quality"
    """Higher is better."""
    DISTANCE = "distance"
    """Lower is better (a distance, or any lower-is-better score)."""


def orientation_of(*, lower_better: bool) -> Orientation:
    return Orientation.DISTANCE if lower_better else Orientation.QUALITY


def score_fields(*, lower_better: bool, score_range: Sequence[float]) -> dict[str, Any]:
    """The fields every score row carries: ``orientation`` and ``score_range`` ([low, high])."""
    return {"orientation": orientation_of(lower_better=bool(lower_better)).value,
            "score_range": [float(score_range[0]), float(score_range[1])]}


def scale_text(row: Mapping[str, Any]) -> str | None:
    """``"quality[0,1]"``: the orientation and range of a row, for tables (None if it has none)."""
    o = row.get("orientation")
    if o is None and "lower_better" in row:
        o = orientation_of(lower_better=bool(row["lower_better"])).value
    if o is None:
        return None
    r = row.get("score_range")
    return f"{o}[{float(r[0]):g},{float(r[1]):g}]" if r is not None and len(r) == 2 else str(o)
