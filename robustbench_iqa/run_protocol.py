"""The protocol lines of a stored run: how the data was split, where the weights came from, what the scores mean.

A run configuration (:func:`robustbench_iqa.runner.record.scores_record` and the runner's
``data`` record) stores how the data part was chosen (``data.split``: the official set, or the
seed, fraction and grouping of a seeded split), where each model's weights came from
(``scores.models[m].weights``) and the orientation and range of every score
(:mod:`robustbench_iqa.orientation`).  :func:`protocol_notes` turns that stored record into the
lines a reader must not miss, for the runner's summary and the report alike; random weights
are always among them.  It reads only the stored mapping, so it sits below both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def split_text(split: Mapping[str, Any]) -> str:
    """``test: official set 'test' (2015 images)`` or ``test: seeded 80/20 split by reference, seed 0``."""
    name = split.get("split", "all")
    if split.get("kind") == "official":
        return f"{name}: the official set {split.get('set')!r} ({split.get('n')} images)"
    if split.get("kind") == "seeded":
        frac = float(split.get("train_fraction", 0.8))
        return (f"{name}: seeded {frac:.0%}/{1 - frac:.0%} split by {split.get('by')}, seed {split.get('seed')} "
                f"({split.get('n')} images; the dataset has no official split)")
    return f"{name}: every image"


def protocol_notes(config: Mapping[str, Any]) -> list[str]:
    """The protocol lines of a stored run configuration: data split, weights (random ones loudly),
    and the orientation of the scores."""
    out: list[str] = []
    data = config.get("data") or {}
    if isinstance(data, Mapping) and isinstance(data.get("split"), Mapping):
        out.append(f"data: {data.get('name')}, {split_text(data['split'])}"
                   + (f"; target {data['score_column']}" if data.get("score_column") else "")
                   + (f" in {data['score_range']}" if data.get("score_range") else ""))
    scores = config.get("scores") or {}
    models = scores.get("models", {}) if isinstance(scores, Mapping) else {}
    for m, rec in models.items():
        origin = rec.get("weights")
        loud = origin in ("random", "pretrained-base")
        out.append(("WARNING: " if loud else "") + f"model {m}: weights {origin}"
                   + (" (random learned parameters: its scores say nothing about image quality)" if loud else "")
                   + f"; its own score is a {rec.get('orientation')} in {rec.get('score_range')}")
    defenses = scores.get("defenses", {}) if isinstance(scores, Mapping) else {}
    kinds = sorted({f"{rec.get('orientation')} in {rec.get('score_range')}" for rec in defenses.values()})
    if defenses:
        out.append("defended scores: " + "; ".join(
            f"{k}: {rec.get('orientation')} in {rec.get('score_range')}" for k, rec in defenses.items())
            if len(kinds) > 1 else f"defended scores: {kinds[0]} (every model and defense)")
    return out
