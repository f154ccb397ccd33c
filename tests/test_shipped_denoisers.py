"""The shipped DMS / DMS-IQA denoisers of the embedded default models (scripts/train_denoisers.py)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from robustbench_iqa.certify.defense import create_defense
from robustbench_iqa.certify.denoised import DenoisedSmoothedIQA, shipped_denoiser
from robustbench_iqa.certify.denoiser import DnCNN, load_denoiser
from robustbench_iqa.data.base import IQADataset
from robustbench_iqa.data.registry import create_dataset
from robustbench_iqa.models.registry import create_model

SIGMA = 0.25
SHIPPED = [(loss, model) for model in ("default-nr", "default-fr") for loss in ("dms", "dms-iqa")]
WEIGHTS = Path(__file__).resolve().parents[1] / "robustbench_iqa" / "weights"
# PSNR gain (dB) of D(x + e) over x + e at sigma 0.25 on held-out images: at least this on
# average and on every image (the shipped denoisers reach ~7-9 dB on average, >= 3.4 dB on each
# of the test's images; see also denoisers-training.json).  An untrained DnCNN is the identity (0 dB).
MIN_GAIN_DB, MIN_GAIN_EACH_DB = 5.0, 2.0


@pytest.fixture(scope="module")
def heldout() -> IQADataset:
    _, test = create_dataset("default").split(seed=0, train_fraction=0.8)
    return test


@pytest.fixture(scope="module")
def record() -> dict:
    return json.loads((WEIGHTS / "denoisers-training.json").read_text())


def _images(ds: IQADataset, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    xs, refs = zip(*(ds.load(i) for i in idx), strict=True)
    return torch.stack(xs), torch.stack(refs)  # type: ignore[arg-type]


def _path(loss: str, model: str) -> Path:
    path = shipped_denoiser(loss, model, SIGMA)
    assert path is not None, f"no shipped {loss} denoiser for {model} at sigma={SIGMA}"
    return path


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(1 / mse)


@pytest.mark.parametrize(("loss", "model"), SHIPPED)
def test_loads_small_and_matches_its_name(loss: str, model: str) -> None:
    path = _path(loss, model)
    assert path.name == f"denoiser-{loss}-{model}-sigma{SIGMA:g}.safetensors"
    assert path.stat().st_size < 1_000_000
    den, info = load_denoiser(path)
    assert isinstance(den, DnCNN) and not den.training
    assert info["loss"] == loss and info["model"] == model and info["sigma"] == SIGMA
    # trained: the last layer left its zero initialization (an untrained DnCNN is the identity)
    last = den.residual[-1]
    assert isinstance(last, torch.nn.Conv2d) and last.weight.abs().sum() > 0


@pytest.mark.parametrize(("loss", "model"), SHIPPED)
def test_defense_builds_without_denoiser_and_runs(loss: str, model: str, heldout: IQADataset) -> None:
    m = create_model(model)
    d = create_defense(loss, m, sigma=SIGMA, batch_size=16)
    den, _ = load_denoiser(_path(loss, model))
    assert isinstance(d, DenoisedSmoothedIQA) and d.denoiser is not None
    for a, b in zip(d.denoiser.state_dict().values(), den.state_dict().values(), strict=True):  # the shipped one
        torch.testing.assert_close(a, b)
    x, ref = _images(heldout, [0, 1])
    x, ref = x[..., 24:72, 32:96], ref[..., 24:72, 32:96]  # central 48x64 crops: 4x faster, same code path
    r = ref if m.full_reference else None
    p = d.predict(x, r, n=8, generator=torch.Generator().manual_seed(0))
    assert p.shape == (2,) and torch.isfinite(p).all()
    res = d.certify(x, r, n=40, alpha=0.99, eps=0.125, generator=torch.Generator().manual_seed(1))
    assert len(res) == 2
    for c in res:
        assert not c.abstained and c.eps_x == 0.125 and c.defense == loss
        assert c.lower is not None and c.upper is not None
        assert all(math.isfinite(v) for v in (c.score, c.lower, c.upper))
        assert c.lower <= c.score <= c.upper


@pytest.mark.parametrize(("loss", "model"), SHIPPED)
def test_denoiser_denoises_heldout_images(loss: str, model: str, heldout: IQADataset) -> None:
    den, _ = load_denoiser(_path(loss, model))
    x, _ = _images(heldout, [0, 7, 23, 50])
    g = torch.Generator().manual_seed(123)
    z = (x + SIGMA * torch.randn(x.shape, generator=g)).clamp(0, 1)
    with torch.no_grad():
        dz = den(z).clamp(0, 1)
    gain = _psnr(dz, x) - _psnr(z, x)
    assert gain.mean() > MIN_GAIN_DB and (gain > MIN_GAIN_EACH_DB).all(), f"PSNR gain per image {gain.tolist()} dB"


def test_training_record_matches_the_shipped_files(record: dict) -> None:
    files = {p.name for p in WEIGHTS.glob("denoiser-*.safetensors")}
    expected = {f"denoiser-{loss}-{model}-sigma{SIGMA:g}.safetensors" for loss, model in SHIPPED}
    assert expected <= files
    assert set(record["denoisers"]) == files
    assert record["config"]["sigma"] == SIGMA and "root" not in record["config"]["dataset"]
    for name, row in record["denoisers"].items():
        path = WEIGHTS / name
        assert row["file"] == name
        assert row["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        _, info = load_denoiser(path)
        assert (info["loss"], info["model"], info["sigma"]) == (row["loss"], row["model"], row["sigma"])
        assert info["extra"]["psnr_denoised"] == row["psnr_denoised"]
        assert row["psnr_denoised"] > row["psnr_noisy"] + MIN_GAIN_DB
        assert math.isfinite(row["srcc"]) and math.isfinite(row["plcc"]) and row["seconds"] > 0
