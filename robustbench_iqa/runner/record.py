"""What a run records of its protocol, and the lines every report and summary shows from it.

The run configuration stores, beside the settings, how the data part was chosen
(``data.split``: the official set, or the seed, fraction and grouping of a seeded split),
where each model's weights came from (``scores.models[m].weights``: ``local``, ``pretrained``,
``file``, ``random``, ...), and the orientation and range of every score
(:mod:`robustbench_iqa.orientation`): the undefended model's and each defense's.
:func:`robustbench_iqa.run_protocol.protocol_notes` turns that record into the lines a reader
must not miss; random weights are always among them (re-exported here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from robustbench_iqa.run_protocol import protocol_notes as protocol_notes
from robustbench_iqa.run_protocol import split_text as split_text

if TYPE_CHECKING:
    from robustbench_iqa.runner.config import VerifyConfig
    from robustbench_iqa.runner.workspace import Workspace


def scores_record(cfg: VerifyConfig, ws: Workspace) -> dict[str, Any]:
    """Per model its weights' origin and its score's orientation and range; per (model, defense,
    sigma) the defended score's orientation and range."""
    from robustbench_iqa.orientation import score_fields

    models = {}
    for m in cfg.models:
        model = ws.model(m)
        models[m] = {"weights": str(getattr(model, "weights_origin", "unknown")),
                     **score_fields(lower_better=bool(model.lower_better), score_range=model.score_range)}
    defenses = {}
    for m in cfg.models:
        for d, s in cfg.defense_cases():
            defense = ws.defense(m, d, s)
            defenses[f"{m}:{d}@{s:g}"] = score_fields(lower_better=bool(defense.lower_better),
                                                      score_range=defense.score_range)
    return {"models": models, "defenses": defenses}
