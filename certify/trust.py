"""What a certified bound may assume about a layer: nothing it did not read.

This module's home is :mod:`robustbench_iqa.lipschitz.trust` (the Lipschitz machinery sits
below the models, which use it, and below the defenses); its names are re-exported here.
"""

from robustbench_iqa.lipschitz.trust import *  # noqa: F403
from robustbench_iqa.lipschitz.trust import __all__ as __all__
