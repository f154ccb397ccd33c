"""Certified global Lipschitz bounds (L2 -> L2) composed from per-layer bounds.

This module's home is :mod:`robustbench_iqa.lipschitz.composition` (the Lipschitz machinery sits
below the models, which use it, and below the defenses); its names are re-exported here.
"""

from robustbench_iqa.lipschitz.composition import *  # noqa: F403
from robustbench_iqa.lipschitz.composition import __all__ as __all__
