"""Datasets of images with subjective (or weak) quality scores.

A dataset is a list of :class:`IQASample` records pointing at image files on
disk, plus metadata.  NR datasets have ``ref=None``; FR datasets carry the path
of the pristine reference.  ``group`` names the source content (the reference
image) so that splits never leak content between train and test (KADID-10k
practice).

Splits (:class:`Split`: ``all``, ``train``, ``validation``, ``test``) are chosen the way the
field uses each dataset: where a dataset publishes an official split, its samples carry
their official set (``IQASample.subset``) and :meth:`IQADataset.select` returns that set
(KonIQ-10k: ``training`` / ``validation`` / ``test``, from ``koniq10k_distributions_sets.csv``);
only a dataset without one is split by seed (80/20, whole groups on one side).  Either way
the chosen part records how it was made (:attr:`IQADataset.selection`), and
:meth:`IQADataset.describe` shows it next to the results.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustbench_iqa.data.images import Resize, load_image, load_pair
from robustbench_iqa.errors import InputError


class Split(StrEnum):
    """The part of a dataset a command works on."""

    ALL = "all"
    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"


SPLIT_ALIASES: dict[str, Split] = {"training": Split.TRAIN, "val": Split.VALIDATION}
"""Other names accepted for a split (KonIQ-10k's files say ``training``)."""

DEFAULT_SPLIT = Split.TEST
"""The default part of every command: the held-out test images.  The FS-IQA study evaluates
every defense on the test part (20%) of each dataset; for KonIQ-10k that is the official
test set (2,015 images, 20% of 10,073), which the published KonIQ-trained models (KonCept512,
pyiqa's KonIQ checkpoints) never saw in training."""

TRAIN_FRACTION = 0.8
"""Share of the groups in the train part of a seeded split (the FS-IQA study: 80/20)."""


def parse_split(value: Split | str) -> Split:
    """A :class:`Split` from its name (or an alias such as ``training``); anything else raises."""
    from robustbench_iqa.registry import did_you_mean

    if isinstance(value, Split):
        return value
    text = str(value).strip().lower()
    if text in SPLIT_ALIASES:
        return SPLIT_ALIASES[text]
    try:
        return Split(text)
    except ValueError:
        names = [s.value for s in Split] + list(SPLIT_ALIASES)
        raise InputError(f"split must be one of {[s.value for s in Split]} (or 'training'), got {value!r}"
                         f"{did_you_mean(str(value), names)}") from None


@dataclass(frozen=True)
class IQASample:
    name: str
    image: Path
    score: float
    ref: Path | None = None
    group: str | None = None
    subset: str | None = None
    """The sample's set in the dataset's official split (KonIQ-10k: ``training``, ``validation``
    or ``test``); None for datasets without one."""


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
    (score column, files), recorded too.  ``official_split``: the dataset's own split, as
    :class:`Split` value -> the ``subset`` label of its samples (empty: none, a seeded split is
    made).  ``selection``: how this object's samples were chosen (set by :meth:`select`).
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
    official_split: Mapping[str, str] = field(default_factory=dict)
    selection: Mapping[str, Any] = field(default_factory=lambda: {"split": "all"})

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

    def split(self, *, seed: int = 0, train_fraction: float = TRAIN_FRACTION) -> tuple[IQADataset, IQADataset]:
        """The (train, test) parts: the official ones where the dataset has an official split
        (``seed`` and ``train_fraction`` are then unused), else a seeded split (see :meth:`select`)."""
        return (self.select(Split.TRAIN, seed=seed, train_fraction=train_fraction),
                self.select(Split.TEST, seed=seed, train_fraction=train_fraction))

    def has_official_split(self) -> bool:
        return bool(self.official_split)

    def select(self, split: Split | str, *, seed: int = 0, train_fraction: float = TRAIN_FRACTION) -> IQADataset:
        """The part ``split`` of this dataset, with :attr:`selection` saying how it was made.

        * ``all``: every sample.
        * a dataset with an official split: the samples of the official set named by
          ``official_split[split]`` (KonIQ-10k: train = ``training``, validation =
          ``validation``, test = ``test``); ``seed`` is unused.
        * otherwise a seeded split: the distinct groups (reference contents; the sample name
          where there is none) are permuted by ``numpy.random.default_rng(seed)`` and the first
          ``round(train_fraction * groups)`` form the train part, the rest the test part, so no
          content is on both sides.  There is no validation part.
        """
        part = parse_split(split)
        if part is Split.ALL:
            return dataclasses.replace(self, selection={"split": "all"})
        if self.official_split:
            label = self.official_split.get(part.value)
            if label is None:
                raise InputError(f"dataset {self.name!r} has no official {part.value} set; its official split "
                                 f"has {sorted(self.official_split)}")
            idx = [i for i, s in enumerate(self.samples) if s.subset == label]
            if not idx:
                found = sorted({str(s.subset) for s in self.samples})
                raise InputError(f"dataset {self.name!r}: no image of the official set {label!r} (sets found: {found})")
            return dataclasses.replace(self.subset(idx), selection={
                "split": part.value, "kind": "official", "set": label, "n": len(idx)})
        if part is Split.VALIDATION:
            raise InputError(f"dataset {self.name!r} has no official split, so no validation set: its seeded "
                             "split has a train and a test part only")
        if not 0.0 < train_fraction < 1.0:
            raise InputError(f"train_fraction must lie strictly between 0 and 1, got {train_fraction}")
        rng = np.random.default_rng(seed)
        keys = [s.group if s.group is not None else s.name for s in self.samples]
        uniq = sorted(set(keys))
        perm = rng.permutation(len(uniq))
        n_train = int(round(train_fraction * len(uniq)))
        train_keys = {uniq[j] for j in perm[:n_train]}
        keep = (lambda k: k in train_keys) if part is Split.TRAIN else (lambda k: k not in train_keys)
        idx = [i for i, k in enumerate(keys) if keep(k)]
        by = "reference" if any(s.group is not None for s in self.samples) else "image"
        return dataclasses.replace(self.subset(idx), selection={
            "split": part.value, "kind": "seeded", "seed": int(seed), "train_fraction": float(train_fraction),
            "by": by, "n": len(idx)})

    def describe(self) -> dict[str, object]:
        """Settings to record next to results: size (``[H, W]`` or ``"native"``), resize policy,
        score range and direction, the dataset's own settings (``extra``: score column, files)
        and the split (:attr:`selection`: official set, or seed, fraction and grouping)."""
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
            "split": dict(self.selection),
        }
