"""Whether an IQA model scores one image or an image against a reference.

A no-reference (NR) model scores the image alone; a full-reference (FR) model scores the
distorted image against its pristine reference (pyiqa's ``metric_mode``: ``"NR"`` / ``"FR"``).
Every model and every defense declares its mode; it decides whether ``ref`` is passed.
A ground name, shared by the models (:mod:`robustbench_iqa.models.base`), the defense protocol
(:mod:`robustbench_iqa.defense_protocol`) and everything above them.
"""

from __future__ import annotations

from enum import StrEnum


class Mode(StrEnum):
    """No-reference (single image) or full-reference (distorted + reference)."""

    NR = "nr"
    FR = "fr"
