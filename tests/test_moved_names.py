"""Names that moved to a lower floor (see tests/test_layering.py) still import from where they were.

Each old module re-exports the object itself (not a copy), and both are read from this checkout.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

MOVED = (
    ("robustbench_iqa.certify.lipschitz", "LipschitzBound", "robustbench_iqa.lipschitz.composition"),
    ("robustbench_iqa.certify.lipschitz", "module_lipschitz_bound", "robustbench_iqa.lipschitz.composition"),
    ("robustbench_iqa.certify.gram_iteration", "conv2d_spectral_bound", "robustbench_iqa.lipschitz.gram_iteration"),
    ("robustbench_iqa.certify.layer_bounds", "blurpool_bound", "robustbench_iqa.lipschitz.layer_bounds"),
    ("robustbench_iqa.certify.layers", "BlurPool2d", "robustbench_iqa.lipschitz.layers"),
    ("robustbench_iqa.certify.tapped", "TappedFeatures", "robustbench_iqa.lipschitz.tapped"),
    ("robustbench_iqa.certify.trust", "require_exact", "robustbench_iqa.lipschitz.trust"),
    ("robustbench_iqa.certify.defense", "Defense", "robustbench_iqa.defense_protocol"),
    ("robustbench_iqa.models", "Mode", "robustbench_iqa.mode"),
    ("robustbench_iqa.models.base", "Mode", "robustbench_iqa.mode"),
    ("robustbench_iqa.analysis.audit", "median_ci_indices", "robustbench_iqa.order_statistics"),
    ("robustbench_iqa.runner.workspace", "CertifiedBatch", "robustbench_iqa.studies.context"),
    ("robustbench_iqa.runner.workspace", "Stopwatch", "robustbench_iqa.studies.context"),
    ("robustbench_iqa.runner.record", "protocol_notes", "robustbench_iqa.run_protocol"),
)


@pytest.mark.parametrize(("old", "name", "home"), MOVED, ids=[f"{o}.{n}" for o, n, _ in MOVED])
def test_a_moved_name_still_imports_from_its_old_module_and_from_this_checkout(
        old: str, name: str, home: str) -> None:
    old_module, new_module = importlib.import_module(old), importlib.import_module(home)
    assert getattr(old_module, name) is getattr(new_module, name)
    for m in (old_module, new_module):
        assert m.__file__ is not None and Path(m.__file__).resolve().is_relative_to(REPO), \
            f"{m.__name__} is read from {m.__file__}, not from this checkout {REPO}"
