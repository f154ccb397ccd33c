"""Running studies into the results store, and the verify gate built on them.

- :mod:`robustbench_iqa.runner.config`: ``[tool.robustbench_iqa.verify]`` settings;
- :mod:`robustbench_iqa.runner.jobs`: certify + audit, stability, beyond-certificate jobs;
- :mod:`robustbench_iqa.runner.checks`: the gate's checks, from the store alone;
- :mod:`robustbench_iqa.runner.verify`: :func:`run_verify`.
"""

from robustbench_iqa.runner.config import VerifyConfig, load_config
from robustbench_iqa.runner.verify import VerifyOutcome, run_verify

__all__ = ["VerifyConfig", "VerifyOutcome", "load_config", "run_verify"]
