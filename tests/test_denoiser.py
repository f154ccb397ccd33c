"""DnCNN, its checkpoints, the DMS/DMS-IQA losses, the training loop and the train-denoiser CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robustbench_iqa.certify.defense import create_defense
from robustbench_iqa.certify.denoiser import DnCNN, load_denoiser, save_denoiser
from robustbench_iqa.certify.denoiser_training import (
    _random_crop,
    check_weights,
    pixel_loss,
    rank_loss,
    score_loss,
    targets_on_model_scale,
    train_denoiser,
)
from robustbench_iqa.cli import main
from robustbench_iqa.data.base import IQADataset, IQASample
from robustbench_iqa.data.images import save_image
from robustbench_iqa.data.registry import DATASETS
from robustbench_iqa.errors import InputError
from robustbench_iqa.models.registry import MODELS
from tests.toy_models import ToyFR, ToyNR, random_images

SIZE = 24


def _smooth_images(b: int, seed: int) -> torch.Tensor:
    """Low-frequency images (bilinear upsampling of 4x4 noise): a denoiser can learn them fast."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(b, 3, 4, 4, generator=g)
    return F.interpolate(base, size=(SIZE, SIZE), mode="bilinear", align_corners=False).clamp(0, 1)


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory: pytest.TempPathFactory) -> IQADataset:
    root = tmp_path_factory.mktemp("denoiser-ds")
    imgs = _smooth_images(12, seed=1)
    ref = _smooth_images(1, seed=2)[0]
    save_image(ref, root / "ref.png")
    samples = []
    for i in range(len(imgs)):
        p = root / f"img{i:02d}.png"
        save_image(imgs[i], p)
        samples.append(IQASample(f"img{i:02d}", p, 1.0 + 4.0 * float(imgs[i].mean()), root / "ref.png", None))
    return IQADataset("den-toy", tuple(samples), higher_better=True, score_range=(1.0, 5.0), size=(SIZE, SIZE))


# ------------------------------------------------------------------- DnCNN
def test_dncnn_shapes_identity_at_init_and_parameter_count() -> None:
    den = DnCNN(depth=4, width=8)
    y = random_images(2, 16, 20)
    torch.testing.assert_close(den(y), y)  # zero last layer: D = identity
    bn = 2 * 8 * 2  # two BN layers (weight + bias)
    convs = (3 * 9 * 8 + 8) + 2 * (8 * 9 * 8) + (8 * 9 * 3 + 3)
    assert sum(p.numel() for p in den.parameters()) == convs + bn
    assert len([m for m in den.modules() if isinstance(m, torch.nn.Conv2d)]) == 4
    full = DnCNN()
    assert len([m for m in full.modules() if isinstance(m, torch.nn.Conv2d)]) == 17 and full.width == 64
    with pytest.raises(InputError):
        DnCNN(depth=1)


def test_checkpoint_roundtrip_and_bad_files(tmp_path: Path) -> None:
    den = DnCNN(depth=3, width=8).reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        den.residual[-1].weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))
    den.eval()
    path = save_denoiser(tmp_path / "d.safetensors", den, sigma=0.25, loss="dms-iqa", model="toy-nr",
                         extra={"weights": [1.0, 0.1, 0.01]})
    back, info = load_denoiser(path)
    y = random_images(1, 16, 16)
    torch.testing.assert_close(back(y), den(y))
    assert info["sigma"] == 0.25 and info["loss"] == "dms-iqa" and info["extra"]["weights"] == [1.0, 0.1, 0.01]
    with pytest.raises(InputError, match="not found"):
        load_denoiser(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read"):
        load_denoiser(tmp_path / "junk.safetensors")


# ------------------------------------------------------------------ losses
def test_pixel_and_score_losses_by_hand() -> None:
    a = torch.zeros(1, 3, 2, 2)
    b = torch.zeros(1, 3, 2, 2)
    b[0, 0, 0, 0], b[0, 2, 1, 1] = 1.0, 0.5
    assert float(pixel_loss(a, b)) == pytest.approx((1.0 + 0.25) / 12)
    assert float(score_loss(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([1.5, 2.0, 1.0]))) == pytest.approx(
        (0.25 + 0 + 9) / 3
    )


def test_rank_loss_by_hand_and_properties() -> None:
    t = 0.5
    pred = torch.tensor([0.2, 0.9, 0.4], requires_grad=True)
    target = torch.tensor([1.0, 3.0, 2.0])
    # Ordered pairs with y_i > y_j: (1,0), (1,2), (2,0).
    by_hand = (math.log1p(math.exp(-(0.9 - 0.2) / t)) + math.log1p(math.exp(-(0.9 - 0.4) / t))
               + math.log1p(math.exp(-(0.4 - 0.2) / t))) / 3
    loss = rank_loss(pred, target, temperature=t)
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0  # type: ignore[union-attr]
    # Ties are ignored; a matching order costs less than the reversed one.
    assert float(rank_loss(torch.tensor([0.1, 0.9]), torch.tensor([2.0, 2.0]))) == 0.0
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert float(rank_loss(y / 4, y)) < float(rank_loss(y.flip(0) / 4, y))
    # A gradient step on the loss moves predictions towards the target order.
    p = torch.tensor([0.8, 0.6, 0.4, 0.2], requires_grad=True)
    before = rank_loss(p, y).item()
    rank_loss(p, y).backward()
    with torch.no_grad():
        p2 = p - 0.05 * p.grad  # type: ignore[operator]
    assert float(rank_loss(p2, y)) < before


def test_targets_on_model_scale_and_weights(toy_dataset: IQADataset) -> None:
    y = torch.tensor([1.0, 3.0, 5.0])
    torch.testing.assert_close(targets_on_model_scale(y, dataset=toy_dataset, model=ToyNR()), torch.tensor([0.0, 0.5, 1.0]))
    # ToyFR is lower-better: the order flips.
    torch.testing.assert_close(targets_on_model_scale(y, dataset=toy_dataset, model=ToyFR()), torch.tensor([1.0, 0.5, 0.0]))
    assert check_weights("dms", None) == (1.0, 0.0, 0.0)
    assert check_weights("dms-iqa", (2, 1, 0.5)) == (2.0, 1.0, 0.5)
    with pytest.raises(InputError, match="patch_size"):
        train_denoiser(ToyNR(), toy_dataset, sigma=0.2, loss="dms-iqa", patch_size=16, progress=False)
    g = torch.Generator().manual_seed(0)
    crops = _random_crop(torch.arange(2 * 3 * 6 * 5, dtype=torch.float32).reshape(2, 3, 6, 5), 4, g)
    assert crops.shape == (2, 3, 4, 4) and crops[0, 0, 1, 0] - crops[0, 0, 0, 0] == 5  # contiguous rows
    for loss, w in [("dms", (1, 1, 0)), ("dms-iqa", (0, 0, 0)), ("dms-iqa", (1, -1, 0)), ("bogus", None)]:
        with pytest.raises(InputError):
            check_weights(loss, w)  # type: ignore[arg-type]


# ---------------------------------------------------------------- training
def test_train_dms_denoises_and_loads_as_defense(toy_dataset: IQADataset, tmp_path: Path) -> None:
    model = ToyNR()
    out = tmp_path / "dms.safetensors"
    den, rep = train_denoiser(model, toy_dataset, sigma=0.2, loss="dms", epochs=25, lr=3e-3, batch_size=4,
                              depth=4, width=16, n_eval=16, seed=0, patch_size=16, out=out, progress=False)
    assert rep.config["patch_size"] == 16
    assert rep.history[-1]["pixel"] < rep.history[0]["pixel"]
    assert rep.psnr_denoised > rep.psnr_noisy + 1.0
    assert rep.n_train + rep.n_test == len(toy_dataset) and rep.config["weights"] == [1.0, 0.0, 0.0]
    d = create_defense("dms", model, sigma=0.2, denoiser=str(out))
    assert d.name == "dms(toy-nr)"
    x, _ = toy_dataset.load(0)
    c = d.certify(x, n=100, alpha=0.99, eps=0.1, generator=torch.Generator().manual_seed(0))[0]
    assert c.defense == "dms" and c.lower <= c.score <= c.upper  # type: ignore[operator]
    with pytest.raises(InputError, match="sigma"):
        create_defense("dms", model, sigma=0.3, denoiser=str(out))
    with pytest.raises(InputError, match="loss"):
        create_defense("dms-iqa", model, sigma=0.2, denoiser=str(out))


def test_train_dms_iqa_records_weights_and_is_deterministic(toy_dataset: IQADataset, tmp_path: Path) -> None:
    model = ToyFR()
    kw = dict(sigma=0.25, loss="dms-iqa", epochs=2, batch_size=4, depth=3, width=8, n_eval=8,
              weights=(1.0, 0.5, 0.2), progress=False)
    d1, r1 = train_denoiser(model, toy_dataset, generator=torch.Generator().manual_seed(5), **kw, out=tmp_path / "a.safetensors")  # type: ignore[arg-type]
    d2, r2 = train_denoiser(model, toy_dataset, generator=torch.Generator().manual_seed(5), **kw)  # type: ignore[arg-type]
    for a, b in zip(d1.state_dict().values(), d2.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert r1.history == r2.history and all(h["rank"] > 0 and h["score"] > 0 for h in r1.history)
    assert all(p.requires_grad for p in model.parameters())  # the model's flags are restored
    _, info = load_denoiser(tmp_path / "a.safetensors")
    assert info["loss"] == "dms-iqa" and info["model"] == "toy-fr"
    assert info["extra"]["config"]["weights"] == [1.0, 0.5, 0.2]
    assert info["extra"]["config"]["rank_loss"] == "pairwise-logistic"
    d = create_defense("dms-iqa", model, sigma=0.25, denoiser=tmp_path / "a.safetensors")
    x, ref = toy_dataset.load(1)
    assert d.predict(x, ref, n=20, generator=torch.Generator().manual_seed(0)).shape == (1,)
    with pytest.raises(InputError, match="trained for model"):
        create_defense("dms-iqa", ToyNR(), sigma=0.25, denoiser=tmp_path / "a.safetensors")


# --------------------------------------------------------------------- CLI
def test_cli_train_denoiser(toy_dataset: IQADataset, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def factory(**_: object) -> ToyNR:
        m = ToyNR()
        m.name = "den-toy-nr"
        return m

    with DATASETS.override("den-toy", lambda **_: toy_dataset), MODELS.override("den-toy-nr", factory):
        rc = main(["train-denoiser", "--model", "den-toy-nr", "--dataset", "den-toy", "--sigma", "0.25",
                   "--loss", "dms-iqa", "--epochs", "1", "--depth", "3", "--width", "8", "--n-eval", "8",
                   "--w-rank", "0.3", "--out", str(tmp_path), "--no-progress"])
        assert rc == 0
        row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        path = tmp_path / "denoiser-dms-iqa-den-toy-nr-sigma0.25.safetensors"
        assert row["checkpoint"] == str(path) and path.is_file() and row["weights"] == [1.0, 0.1, 0.3]
        assert math.isfinite(row["psnr_denoised"])
        rc = main(["train-denoiser", "--model", "den-toy-nr", "--dataset", "den-toy", "--loss", "dms",
                   "--w-score", "1", "--out", str(tmp_path), "--no-progress"])
        assert rc == 2 and "dms-iqa only" in capsys.readouterr().err
