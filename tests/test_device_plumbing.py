"""Randomness and results live on the device of the data (checked without a GPU: the ``meta`` device
and a recording stand-in for torch.Generator)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch

from robustbench_iqa.certify.spectral import jacobian_spectral_norm
from robustbench_iqa.cli import _common as c

CLI = Path(__file__).resolve().parents[1] / "robustbench_iqa" / "cli"


def test_no_command_seeds_a_generator_on_a_fixed_device() -> None:
    """Every generator of a command is made on ``--device`` (``seeded_generator``/``item_generator``)."""
    offenders = []
    for path in sorted(CLI.glob("*.py")):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"torch\.Generator\((\)|device=\"cpu\")", line):
                offenders.append(f"{path.name}:{i}: {line.strip()}")
    assert offenders == []


@pytest.mark.parametrize("device", ["cpu", "cuda:1"])
def test_seeded_generator_is_made_on_the_run_device(monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    made: list[torch.device] = []

    class Recording:
        def __init__(self, device: torch.device | str = "cpu") -> None:
            made.append(torch.device(device))

        def manual_seed(self, seed: int) -> Recording:
            self.seed = seed
            return self

    monkeypatch.setattr(torch, "Generator", Recording)
    g = c.seeded_generator(argparse.Namespace(device=device, seed=5))
    assert made == [torch.device(device)] and g.seed == 5  # type: ignore[attr-defined]
    g = c.seeded_generator(argparse.Namespace(device=device, seed=5), seed=9)
    assert g.seed == 9  # type: ignore[attr-defined]


def test_item_generator_is_made_on_the_run_device() -> None:
    from robustbench_iqa.cli._store import item_generator

    args = argparse.Namespace(device="cpu", seed=3)
    a = torch.rand(4, generator=item_generator(args, "img1"))
    b = torch.rand(4, generator=item_generator(args, "img1"))
    assert torch.equal(a, b) and item_generator(args, "x").device == torch.device("cpu")


def test_same_seed_same_rows_on_one_device() -> None:
    args = argparse.Namespace(device="cpu", seed=11)
    assert torch.equal(torch.randn(8, generator=c.seeded_generator(args)),
                       torch.randn(8, generator=c.seeded_generator(args)))


def test_exact_spectral_norm_results_live_on_the_data_device() -> None:
    w = torch.randn(5, 12, device="meta")
    x = torch.rand(2, 3, 2, 2, device="meta")
    est = jacobian_spectral_norm(lambda z: z.flatten(1) @ w.T, x, method="exact")
    for name in ("value", "iterations", "rel_change", "converged", "products"):
        assert getattr(est, name).device == x.device, name
