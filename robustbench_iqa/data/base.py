"""Datasets of images with subjective (or weak) quality scores.

A dataset is a list of :class:`IQASample` records pointing at image files on
disk, plus metadata.  NR datasets have ``ref=None``; FR datasets carry the path
of the pristine reference.  ``group`` names the source content (the reference
image) so that splits never leak content between train and test (KADID-10k
practice).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from robustbench_iqa.data.images import Resize, load_image, load_pair


@dataclass(frozen=True)
class IQASample:
    name: str
    image: Path
    score: float
    ref: Path | None = None
    group: str | None = None


@dataclass(frozen=True)
class IQADataset:
    """An indexed collection of :class:`IQASample` with loading settings.

    ``higher_better``: whether a larger subjective score means better quality
    (MOS: yes; DMOS: also yes for KADID-10k's ``dmos`` column, which is a MOS-like
    score in [1, 5]).  ``size``/``resize``: working size and policy, recorded in
    results (FS-IQA study: 384x512); ``size=None`` is the native size of each image.
    ``max_pixels``: downscale larger images first (None: never).  ``resize_ref``: resize a
    reference of another size to its image's (default: refuse the pair, see
    :func:`~robustbench_iqa.data.images.load_pair`).  ``extra``: the dataset's own settings
    (score column, official split, files), recorded too.
    """

    name: str
    samples: tuple[IQASample, ...]
    higher_better: bool = True
    score_range: tuple[float, float] = (0.0, 1.0)
    size: tuple[int, int] | None = None
    resize: Resize = Resize.RESIZE
    root: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)
    max_pixels: int | None = None
    resize_ref: bool = False

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[IQASample]:
        return iter(self.samples)

    @property
    def has_references(self) -> bool:
        return all(s.ref is not None for s in self.samples) and len(self.samples) > 0

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Image (3, H, W) and reference (or None) of sample ``i``, in [0, 1]."""
        s = self.samples[i]
        if s.ref is None:
            return load_image(s.image, size=self.size, resize=self.resize, max_pixels=self.max_pixels), None
        return load_pair(s.image, s.ref, size=self.size, resize=self.resize, max_pixels=self.max_pixels,
                         resize_ref=self.resize_ref)

    def subset(self, indices: Sequence[int]) -> IQADataset:
        return dataclasses.replace(self, samples=tuple(self.samples[i] for i in indices))

    def head(self, limit: int | None) -> IQADataset:
        return self if limit is None else self.subset(range(min(limit, len(self))))

    def split(self, *, seed: int = 0, train_fraction: float = 0.8) -> tuple[IQADataset, IQADataset]:
        """Deterministic train/test split by seed (FS-IQA study: 80/20).

        When samples carry a ``group`` (reference content), whole groups go to
        one side, so no content leaks between train and test.
        """
        rng = np.random.default_rng(seed)
        keys = [s.group if s.group is not None else s.name for s in self.samples]
        uniq = sorted(set(keys))
        perm = rng.permutation(len(uniq))
        n_train = int(round(train_fraction * len(uniq)))
        train_keys = {uniq[j] for j in perm[:n_train]}
        train = [i for i, k in enumerate(keys) if k in train_keys]
        test = [i for i, k in enumerate(keys) if k not in train_keys]
        return self.subset(train), self.subset(test)

    def describe(self) -> dict[str, object]:
        """Settings to record next to results: size (``[H, W]`` or ``"native"``), resize policy,
        score range and direction, and the dataset's own settings (``extra``: score column,
        official split, files)."""
        return {
            "dataset": self.name,
            "n_samples": len(self),
            "size": list(self.size) if self.size else "native",
            "resize": self.resize.value if self.size else "none",
            "score_range": list(self.score_range),
            "higher_better": self.higher_better,
            "root": str(self.root) if self.root else None,
            **({"max_pixels": self.max_pixels} if self.max_pixels is not None else {}),
            **({"resize_ref": True} if self.resize_ref else {}),
            **self.extra,
        }
