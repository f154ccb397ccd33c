"""The README examples: every verify configuration parses and validates (keys, tables, types) and
every Python block runs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from robustbench_iqa.runner import VerifyConfig

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = [b for b in re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)
          if "[tool.robustbench_iqa.verify]" in b]


def test_the_readme_shows_verify_configs() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_verify_config_is_valid(block: str) -> None:
    table = tomllib.loads(block)["tool"]["robustbench_iqa"]["verify"]
    cfg = VerifyConfig.from_mapping(table).validate()
    assert cfg.models and cfg.defense_cases()


PYTHON = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


@pytest.mark.parametrize("block", PYTHON, ids=[f"python{i}" for i in range(len(PYTHON))])
def test_readme_python_block_runs(block: str, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(block, "README.md", "exec"), {})  # the README's own example
    assert capsys.readouterr().out.strip()
