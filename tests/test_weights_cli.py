"""``robustbench-iqa weights check|convert``: what was loaded, from where, with SHA-256; clear errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from robustbench_iqa.cli import main
from robustbench_iqa.cli.weights import parse_model_options
from robustbench_iqa.models.registry import create_model
from tests.toy_models import random_images


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def lpips_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A head-only LPIPS file (the lin layers, as pyiqa and the lpips package ship) and a
    torchvision-format AlexNet trunk, both random."""
    d = tmp_path_factory.mktemp("lpips")
    net = create_model("lpips", weights="random").net
    torch.save({k: v for k, v in net.state_dict().items() if k.startswith("lin") and not k.startswith("lins")},
               d / "alex.pth")
    torch.manual_seed(0)
    trunk = torchvision.models.alexnet(weights=None).features
    torch.save({f"features.{k}": v for k, v in trunk.state_dict().items()}, d / "alexnet-owt-7be5be79.pth")
    return d / "alex.pth", d / "alexnet-owt-7be5be79.pth"


def test_check_prints_format_files_and_sha256(lpips_files: tuple[Path, Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    head, trunk = lpips_files
    assert main(["weights", "check", "--model", "lpips", "--weights", str(head),
                 "--model-option", f"trunk={trunk}", "--model-option", "input_size=native"]) == 0
    out = capsys.readouterr().out
    assert "(head only) + torchvision ImageNet trunk" in out
    assert f"lpips weights: {head.resolve()}  sha256={_sha(head)}" in out
    assert f"ImageNet trunk: {trunk.resolve()}  sha256={_sha(trunk)}" in out
    assert "protocol: input_size=native" in out


def test_convert_writes_a_file_that_loads_to_the_same_model(lpips_files: tuple[Path, Path], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    head, trunk = lpips_files
    out = tmp_path / "lpips-converted.safetensors"
    assert main(["weights", "convert", "--model", "lpips", "--weights", str(head), "--model-option",
                 f"trunk={trunk}", "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["written"] == {"path": str(out), "sha256": _sha(out)}
    assert [f["role"] for f in report["weights"]["files"]] == ["lpips weights", "ImageNet trunk"]
    original = create_model("lpips", weights=head, trunk=trunk)
    converted = create_model("lpips", weights=out)
    x, r = random_images(2, 48, 48, seed=1), random_images(2, 48, 48, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(converted(x, r), original(x, r), rtol=0, atol=0)


@pytest.mark.parametrize("argv, message", [
    (["check", "--model", "lpips", "--weights", "{head}"], "holds only the calibrated head of lpips.*trunk=PATH"),
    (["check", "--model", "lpips", "--weights", "{tmp}/missing.pth"], "weights file not found"),
    (["check", "--model", "lpips", "--weights", "{head}", "--model-option", "trunk"], "KEY=VALUE"),
    (["check", "--model", "lpips", "--weights", "{head}", "--model-option", "trunc=x"], "did you mean 'trunk'"),
    (["check", "--model", "lpipz", "--weights", "{head}"], "unknown model 'lpipz'; did you mean 'lpips'"),
    (["convert", "--model", "lpips", "--weights", "{head}", "--out", "{tmp}/x.pt"], "must be a .safetensors"),
    (["check", "--model", "koncept", "--weights", "{tmp}"], "is a folder"),
    (["check", "--model", "dreamsim", "--weights", "{tmp}"], "not DreamSim.s release.*lacks clip_vitb16_pretrain.pth.tar, open_clip_vitb16_pretrain.pth.tar, ensemble_lora"),
])
def test_bad_input_is_one_error_line(argv: list[str], message: str, lpips_files: tuple[Path, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    args = [a.format(head=lpips_files[0], tmp=tmp_path) for a in argv]
    assert main(["weights", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    import re

    assert re.search(message, err), err


def test_model_options_are_typed() -> None:
    assert parse_model_options(["num_crops=25", "crops=random", "x=0.5", "input_size=384x512"]) == {
        "num_crops": 25, "crops": "random", "x": 0.5, "input_size": "384x512"}


def test_help_imports_nothing_heavy() -> None:
    code = "import sys, robustbench_iqa.cli.weights; print(sorted(m for m in ('torch', 'pyiqa', 'timm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
