"""Certified upper bounds on the spectral norm of dense and convolutional layers.

This module's home is :mod:`robustbench_iqa.lipschitz.gram_iteration` (the Lipschitz machinery sits
below the models, which use it, and below the defenses); its names are re-exported here.
"""

from robustbench_iqa.lipschitz.gram_iteration import *  # noqa: F403
from robustbench_iqa.lipschitz.gram_iteration import __all__ as __all__
