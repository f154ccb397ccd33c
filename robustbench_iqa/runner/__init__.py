"""Running studies into the results store, and the verify gate built on them.

- :mod:`robustbench_iqa.runner.config`: ``[tool.robustbench_iqa.verify]`` settings and study sections;
- :mod:`robustbench_iqa.runner.plan`: inputs identified by content, every study's units of work;
- :mod:`robustbench_iqa.runner.workspace`: models, defenses and seeds of a worker;
- :mod:`robustbench_iqa.runner.executor`: executors and the single writer of results;
- :mod:`robustbench_iqa.runner.gate`: the verdict, judged once from the store;
- :mod:`robustbench_iqa.runner.verify`: :func:`run_verify`.
"""

from robustbench_iqa.runner.config import VerifyConfig, load_config
from robustbench_iqa.runner.verify import VerifyOutcome, run_verify

__all__ = ["VerifyConfig", "VerifyOutcome", "load_config", "run_verify"]
