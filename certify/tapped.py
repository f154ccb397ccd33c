"""The feature map of a multi-tap perceptual trunk, with its certified global and local bounds.

This module's home is :mod:`robustbench_iqa.lipschitz.tapped` (the Lipschitz machinery sits
below the models, which use it, and below the defenses); its names are re-exported here.
"""

from robustbench_iqa.lipschitz.tapped import *  # noqa: F403
from robustbench_iqa.lipschitz.tapped import __all__ as __all__
