"""Small fixed layers of real perceptual networks, as exact modules the bounds can read.

This module's home is :mod:`robustbench_iqa.lipschitz.layers` (the Lipschitz machinery sits
below the models, which use it, and below the defenses); its names are re-exported here.
"""

from robustbench_iqa.lipschitz.layers import *  # noqa: F403
from robustbench_iqa.lipschitz.layers import __all__ as __all__
