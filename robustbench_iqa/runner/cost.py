"""What a run costs, and what a larger one will: seconds per image from a store, hours on N workers.

A run's store records every unit of work with its compute seconds and its image
count (:meth:`~robustbench_iqa.store.ResultsStore.units_frame`).  :func:`unit_costs`
turns them into seconds per image for each (study, model, defense, sigma): the
median over units of ``seconds / images``, so a unit that also built a model or
warmed up a device does not inflate it.  :func:`project` scales a pilot run to a
target number of images per model and divides by the workers:

    hours = sum over groups of (s/img x images) / (workers x efficiency) / 3600

Groups (a study's part, e.g. one attack norm) whose images are all of the run's
inputs (the certify study, and the audit that runs inside its units) scale to the
target; parts with a smaller limit of their own (stability, beyond) keep their size.  ``efficiency`` is the fraction of worker time
spent computing units (1 minus the scheduling overhead and idle tail measured by
``benchmarks/ray_throughput.py``).

:data:`PAPER_A100_SECONDS` holds the FS-IQA paper's times per 384x512 image with
certification on an A100 (Tables 1-2; N = 2000 draws, alpha = 0.999), and
:func:`paper_hours` the Tables 1-2 workload from them: three models x three sigmas x
six defenses on the 20% test split of KonIQ-10k (NR) and KADID-10k (FR).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pandas as pd

from robustbench_iqa.errors import InputError
from robustbench_iqa.store import ResultsStore

PAPER_A100_SECONDS: dict[str, dict[str, float]] = {
    "nr": {"rs-reg": 4.2, "cert-reg": 4.2, "ms": 4.2, "dms": 7.9, "dms-iqa": 7.9, "fs-iqa": 6.9},
    "fr": {"rs-reg": 6.9, "cert-reg": 6.9, "ms": 6.9, "dms": 10.5, "dms-iqa": 10.5, "fs-iqa": 7.5},
}
"""Seconds per image with certification on an A100 (FS-IQA paper, Table 1: NR models on
KonIQ-10k; Table 2: FR models on KADID-10k; means over the three models of each table)."""


@dataclass(frozen=True)
class Workload:
    """One table of the paper: its models, sigmas and test images (this suite's 80/20 split)."""

    name: str
    mode: str
    models: int
    sigmas: int
    images: int


TABLES_1_2 = (
    Workload("Table 1: DBCNN, HyperIQA, KonCept on KonIQ-10k (test 20%)", "nr", 3, 3, 2015),
    Workload("Table 2: LPIPS, DISTS, DreamSim on KADID-10k (test 20%)", "fr", 3, 3, 2000),
)
"""KonIQ-10k: 10,073 images, 2,015 in the test split; KADID-10k: 81 references x 125
distortions, split by reference (16 references, 2,000 images in the test split)."""


def paper_hours(workload: Workload, *, gpus: int, efficiency: float = 1.0) -> float:
    """Hours of ``workload`` on ``gpus`` A100s at the paper's per-image times (all six defenses)."""
    _check(gpus, efficiency)
    per_image = sum(PAPER_A100_SECONDS[workload.mode].values())
    return per_image * workload.models * workload.sigmas * workload.images / (gpus * efficiency) / 3600


def unit_costs(store: ResultsStore) -> pd.DataFrame:
    """Per (study, model, defense, sigma, part): units, images, seconds, median seconds per image."""
    units = store.units_frame()
    if units.empty:
        raise InputError(f"{store.path} has no units of work to measure")
    units = units.assign(per_image=units["seconds"] / units["images"].clip(lower=1))
    keys = ["study", "model", "defense", "sigma", "part"]
    out = units.groupby(keys, sort=True).agg(units=("key", "size"), images=("images", "sum"),
                                             seconds=("seconds", "sum"), s_per_image=("per_image", "median"))
    return out.reset_index()


def project(costs: pd.DataFrame, *, inputs: Mapping[str, int], images: int, workers: int,
            efficiency: float = 1.0) -> pd.DataFrame:
    """Each group of ``costs`` at ``images`` images per model (see the module docstring).

    ``inputs``: the pilot run's number of inputs per model; groups with that many images
    scale to ``images``, the others keep theirs.  Columns added: ``projected_images``,
    ``projected_hours`` (compute hours of the group on one worker) and, on every row,
    ``wall_hours`` (the total on ``workers`` at ``efficiency``).
    """
    _check(workers, efficiency)
    if images < 1:
        raise InputError(f"images must be >= 1, got {images}")
    scaled = [int(images) if int(n) == int(inputs.get(m, -1)) else int(n)
              for m, n in zip(costs["model"], costs["images"])]
    out = costs.assign(projected_images=scaled)
    out["projected_hours"] = out["s_per_image"] * out["projected_images"] / 3600
    out["wall_hours"] = float(out["projected_hours"].sum()) / (workers * efficiency)
    return out


def run_inputs(store: ResultsStore) -> dict[str, int]:
    """Inputs per model of a verify run: the images of its certify units (else of its largest study)."""
    units = store.units_frame()
    if units.empty:
        return {}
    certify = units[units["study"] == "certify"]
    frame = certify if not certify.empty else units
    per_group = frame.groupby(["model", "defense", "sigma", "study", "part"])["images"].sum()
    return {str(m): int(g.max()) for m, g in per_group.groupby(level="model")}


def _check(workers: int, efficiency: float) -> None:
    if workers < 1:
        raise InputError(f"workers must be >= 1, got {workers}")
    if not 0 < efficiency <= 1:
        raise InputError(f"efficiency must lie in (0, 1], got {efficiency}")
