"""Certified Lipschitz constants (L2 -> L2) of the fixed layers of real perceptual networks.

This module's home is :mod:`robustbench_iqa.lipschitz.layer_bounds` (the Lipschitz machinery sits
below the models, which use it, and below the defenses); its names are re-exported here.
"""

from robustbench_iqa.lipschitz.layer_bounds import *  # noqa: F403
from robustbench_iqa.lipschitz.layer_bounds import __all__ as __all__
