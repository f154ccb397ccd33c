"""`certify` flags of the sound radii, the norm's upper bound and the published RS-Reg/Cert-Reg radii.

References are the library calls the flags stand for (same model, seed and settings), so a flag
that is dropped or misrouted on its way to the defense shows as a different number.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from robustbench_iqa.certify.defense import create_defense
from robustbench_iqa.cli import main
from robustbench_iqa.data.images import load_image, save_image
from robustbench_iqa.models.registry import create_model
from tests.toy_models import random_images

BASE = ["certify", "--model", "default-nr", "--dataset", "default", "--limit", "2", "--n", "600",
        "--json", "--no-progress", "--batch-size", "2", "--seed", "3"]


def _rows(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[dict[str, Any]]:
    assert main(argv) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_sound_radii_are_reported_and_never_above_the_first_order_one(capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows(capsys, [*BASE, "--local-radius"])
    assert len(rows) == 2
    for r in rows:
        assert r["eps_x_lipschitz"] is not None and r["eps_x_local"] is not None
        # L >= ||J_B(x)||_2 and the local bound >= it too, so neither sound radius can exceed sigma_f / ||J||.
        assert 0 < r["eps_x_lipschitz"] <= r["eps_x"] * (1 + 1e-3)
        assert 0 < r["eps_x_local"] <= r["eps_x"] * (1 + 1e-3)
    plain = _rows(capsys, [*BASE, "--no-lipschitz"])
    assert all(r["eps_x_lipschitz"] is None and r["eps_x_local"] is None for r in plain)
    assert [r["eps_x"] for r in plain] == pytest.approx([r["eps_x"] for r in rows], rel=1e-6)


def test_the_table_shows_the_sound_radius_columns(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a for a in BASE if a != "--json"]
    assert main([*argv, "--local-radius"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split()
    assert header[header.index("eps_x") + 1: header.index("eps_x") + 3] == ["eps_x_lipschitz", "eps_x_local"]


def test_delta_certifies_from_the_upper_bound(capsys: pytest.CaptureFixture[str]) -> None:
    est = _rows(capsys, BASE)
    bound = _rows(capsys, [*BASE, "--delta", "0.001"])
    for e, b in zip(est, bound, strict=True):
        assert b["spectral_norm_upper"] >= e["spectral_norm"] * (1 - 1e-6)  # an upper bound is above the estimate
        assert b["eps_x"] == pytest.approx(0.25 / b["spectral_norm_upper"], rel=1e-9)
        assert b["confidence"] == pytest.approx(b["alpha"] - 0.001) and e["confidence"] == e["alpha"]
        assert b["eps_x_first_order"] == pytest.approx(0.25 / b["spectral_norm"], rel=1e-9)


@pytest.mark.parametrize(("argv", "message"), [
    (["--defense", "ms", "--delta", "0.01"], "--delta does not apply to defense 'ms'"),
    (["--defense", "ms", "--local-radius"], "--local-radius does not apply"),
    (["--defense", "ms", "--no-lipschitz"], "--no-lipschitz does not apply"),
    (["--defense", "ms", "--eps-y", "0.1"], "eps_y"),
    (["--defense", "fs-iqa", "--certificate", "radius"], "certificate"),
    (["--defense", "rs-reg", "--certificate", "nonsense"], "nonsense"),
    (["--delta", "0.9999"], "delta"),
    (["--delta", "0.6"], "confidence alpha - delta stays >= 0.5"),
    (["--defense", "cert-reg", "--trim", "0.5"], "trim"),
    (["--defense", "rs-reg", "--trim", "0.1"], "trim"),
])
def test_flags_a_defense_does_not_take_are_refused(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                    message: str) -> None:
    assert main([*BASE, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and "Traceback" not in err


@pytest.mark.parametrize(("defense", "options"), [
    ("rs-reg", {"certificate": "radius", "eps_y": 0.05, "p_valid": 0.8}),
    ("cert-reg", {"certificate": "radius", "eps_y": 0.05, "p_valid": 0.9, "n_smooth": 10, "trim": 0.1}),
])
def test_published_radius_flags_reach_the_defense(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                  defense: str, options: dict[str, Any]) -> None:
    x = random_images(2, 32, 32, seed=5)
    paths = [tmp_path / f"{i}.png" for i in range(2)]
    for img, p in zip(x, paths, strict=True):
        save_image(img, p)
    flags = [f for k, v in options.items() for f in ("--" + k.replace("_", "-"), str(v))]
    rows = _rows(capsys, ["certify", "--model", "default-nr", "--image", str(paths[0]), "--image", str(paths[1]),
                          "--n", "600", "--json", "--no-progress", "--batch-size", "2", "--seed", "3",
                          "--defense", defense, "--sigma", "0.02", *flags])
    model = create_model("default-nr")
    x = torch.stack([load_image(p) for p in paths])
    want = create_defense(defense, model, sigma=0.02, **options).certify(
        x, n=600, alpha=0.999, generator=torch.Generator().manual_seed(3))
    default = create_defense(defense, model, sigma=0.02).certify(
        x, n=600, alpha=0.999, generator=torch.Generator().manual_seed(3))
    for r, w, d in zip(rows, want, default, strict=True):
        assert r["guarantee"] == w.guarantee.value != d.guarantee.value
        assert r["eps_x"] == pytest.approx(w.eps_x, rel=1e-6) and r["score"] == pytest.approx(w.score, rel=1e-6)
