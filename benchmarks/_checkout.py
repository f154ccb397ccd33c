"""Put this checkout first on ``sys.path``, so that a script runs this checkout's package.

``python scripts/x.py`` puts the script's folder first on ``sys.path``, not the checkout, so
``import robustbench_iqa`` would load whatever the environment holds: an installed release, or
the editable install of another clone sharing the environment.  Each script imports this module
before its first ``robustbench_iqa`` import, and then measures, trains or writes with the code
beside it.
"""

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path[:1]:
    sys.path.insert(0, ROOT)
