"""Small synthetic copies of KonIQ-10k and KADID-10k in their official layouts.

File names, folders and CSV columns are those of the official downloads; the images are
random noise (tiny, so tests stay fast) and the scores are made up, but related as in the
real files: the sets file's ``MOS`` equals the scores file's ``MOS_zscore`` (0-100), which
is *not* a linear function of the 1-5 ``MOS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

KONIQ_SETS = ("training", "validation", "test")


def _image(path: Path, seed: int, size: tuple[int, int] = (24, 32)) -> None:
    arr = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@dataclass(frozen=True)
class Koniq:
    names: tuple[str, ...]
    mos: tuple[float, ...]
    """1-5 MOS (scores file ``MOS``)."""
    zscore: tuple[float, ...]
    """0-100 z-score MOS (scores file ``MOS_zscore`` = sets file ``MOS``)."""
    sets: tuple[str, ...]

    def names_of(self, official_set: str) -> list[str]:
        return [n for n, s in zip(self.names, self.sets) if s == official_set]


def make_koniq(root: Path, *, n: int = 20, seed: int = 0, scores_file: bool = True, sets_file: bool = True,
               folder: str = "512x384") -> Koniq:
    """``n`` images in ``root/folder`` with ``koniq10k_scores_and_distributions.csv`` and/or
    ``koniq10k_distributions_sets.csv``; the official sets are assigned at random (70/10/20)."""
    rng = np.random.default_rng(seed)
    names = tuple(f"{int(v)}.jpg" for v in rng.choice(10**10, size=n, replace=False) + 10**9)
    mos = tuple(float(round(v, 4)) for v in rng.uniform(1.2, 4.8, size=n))
    zscore = tuple(float(round(100 * ((m - 1) / 4) ** 0.7, 4)) for m in mos)  # monotone, not linear
    sets = tuple(str(s) for s in rng.choice(KONIQ_SETS, size=n, p=[0.7, 0.1, 0.2]))
    for k, s in enumerate(KONIQ_SETS):  # every set present
        if s not in sets:
            sets = sets[:k] + (s,) + sets[k + 1:]
    for i, name in enumerate(names):
        _image(root / folder / name, seed=1000 * seed + i)
    dist = "c1,c2,c3,c4,c5,c_total"
    if scores_file:
        lines = [f"image_name,{dist},MOS,SD,MOS_zscore"]
        lines += [f"{nm},1,2,3,2,1,9,{m},0.7,{z}" for nm, m, z in zip(names, mos, zscore)]
        (root / "koniq10k_scores_and_distributions.csv").write_text("\n".join(lines) + "\n")
    if sets_file:
        lines = [f"image_name,{dist},MOS,SD,set"]
        lines += [f"{nm},1,2,3,2,1,9,{z},0.7,{s}" for nm, z, s in zip(names, zscore, sets)]
        (root / "koniq10k_distributions_sets.csv").write_text("\n".join(lines) + "\n")
    return Koniq(names, mos, zscore, sets)


def make_kadid(root: Path, *, n_refs: int = 10, n_dist: int = 2, levels: int = 2) -> dict[str, str]:
    """``root/kadid10k/dmos.csv`` and ``images/`` (I01.png, I01_01_01.png, ...); distorted -> reference."""
    folder = root / "kadid10k"
    lines = ["dist_img,ref_img,dmos,var"]
    ref_of: dict[str, str] = {}
    rng = np.random.default_rng(7)
    for r in range(1, n_refs + 1):
        ref = f"I{r:02d}.png"
        _image(folder / "images" / ref, seed=500 + r)
        for d in range(1, n_dist + 1):
            for lv in range(1, levels + 1):
                dist = f"I{r:02d}_{d:02d}_{lv:02d}.png"
                _image(folder / "images" / dist, seed=10_000 * r + 100 * d + lv)
                lines.append(f"{dist},{ref},{rng.uniform(1, 5):.3f},0.1")
                ref_of[dist] = ref
    (folder / "dmos.csv").write_text("\n".join(lines) + "\n")
    return ref_of
