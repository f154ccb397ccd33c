"""ST-LPIPS rebuilt from plain layers equals the official ``stlpips_pytorch`` forward on its real weights."""

from __future__ import annotations

import math
import sys
from typing import Any

import pytest
import torch

from robustbench_iqa.errors import InputError
from robustbench_iqa.models import create_model, model_info
from robustbench_iqa.models.stlpips import official_lpips

pytest.importorskip("stlpips_pytorch")


def _pair(h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(2, 3, h, w, generator=g)
    x = (ref + 0.15 * torch.randn(2, 3, h, w, generator=g)).clamp(0, 1)
    return x, ref


@pytest.mark.parametrize("net,h,w", [("alex", 64, 64), ("alex", 96, 128), ("alex", 256, 256),
                                     ("vgg", 64, 64), ("vgg", 96, 128)])
def test_distance_equals_the_official_package(net: str, h: int, w: int) -> None:
    torch.set_num_threads(1)
    official = official_lpips(net)
    ours = create_model(f"st-lpips-{net}")
    x, ref = _pair(h, w, seed=h + w)
    with torch.no_grad():
        expected = official(x, ref, normalize=True).flatten()
        got = ours(x, ref)
        feats = ours.features(x, ref)
    assert feats.shape == (2, sum(official.chns))
    assert float(expected.min()) > 1e-3  # a real, non-trivial distance
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-8)  # distances ~6e-3; measured |diff| < 2e-9
    assert "IPython" not in sys.modules and "torchsummary" not in sys.modules


def test_features_are_fixed_size_at_any_image_size() -> None:
    model = create_model("st-lpips-alex")
    dims = set()
    for h, w in [(48, 48), (64, 96), (97, 131)]:
        x, ref = _pair(h, w, seed=1)
        with torch.no_grad():
            dims.add(tuple(model.features(x, ref).shape))
    assert dims == {(2, 1152)}


def test_metadata_provenance_and_identity() -> None:
    for name in ("st-lpips-alex", "st-lpips-vgg"):
        info = model_info(name)
        assert info.mode.value == "fr" and info.lower_better
    model = create_model("st-lpips-alex")
    rec = model.weights_source.describe()
    (file,) = rec["files"]
    assert file["path"].endswith("alex_shift_tolerant.pth")
    import hashlib
    from pathlib import Path

    assert file["sha256"] == hashlib.sha256(Path(file["path"]).read_bytes()).hexdigest()
    x, _ = _pair(64, 64, seed=3)
    with torch.no_grad():
        assert float(model(x, x).abs().max()) < 1e-6  # d(x, x) = 0


def test_weights_path_and_bad_files(tmp_path: Any) -> None:
    from robustbench_iqa.models.stlpips import package_weights

    path = package_weights("alex")
    a = create_model("st-lpips-alex")
    b = create_model("st-lpips-alex", weights=str(path))
    x, ref = _pair(64, 64, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(a(x, ref), b(x, ref), rtol=0, atol=0)
    with pytest.raises(InputError, match="does not fit|not an ST-LPIPS"):
        create_model("st-lpips-vgg", weights=str(path))  # AlexNet file for the VGG network
    with pytest.raises(InputError, match="no random version"):
        create_model("st-lpips-alex", weights="random")
    with pytest.raises(InputError):
        create_model("st-lpips-alex", wieghts=str(path))  # misspelled keyword


def test_gradient_is_finite_and_nonzero() -> None:
    model = create_model("st-lpips-alex")
    x, ref = _pair(64, 64, seed=5)
    x.requires_grad_(True)
    model(x, ref).sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and float(x.grad.abs().sum()) > 0


@pytest.mark.parametrize("name", ["st-lpips-alex", "st-lpips-alex-nr", pytest.param("st-lpips-vgg", marks=pytest.mark.slow)])
def test_sound_radii_exist_and_hold_on_the_real_networks(name: str) -> None:
    """The features are the TappedFeatures map the bounds read, and its certified global bound is at
    least the exact Jacobian norm (FR: also at the reference itself).  The local radius on these maps
    is attacked in tests/test_tapped.py (real_fs)."""
    from robustbench_iqa.lipschitz.tapped import TappedFeatures

    model = create_model(name)
    assert type(model.feature_map) is TappedFeatures
    x, ref = _pair(32, 32, seed=11)
    refs = [ref, x.clone()] if model.full_reference else [None]
    bound = model.lipschitz_bound((32, 32)).value
    assert math.isfinite(bound) and bound > 0
    for r in refs:
        with torch.no_grad():
            torch.testing.assert_close(model.features(x, r), model.feature_map(x, r), rtol=0, atol=0)
        r0 = None if r is None else r[:1]
        jac = torch.autograd.functional.jacobian(lambda z, r0=r0: model.features(z[None], r0)[0], x[0])
        jac = jac.reshape(model.feature_dim, -1)
        assert float(torch.linalg.matrix_norm(jac, ord=2)) <= bound


def test_nr_model_features_are_the_official_trunk_pooled() -> None:
    """b(x) of st-lpips-alex-nr = the per-channel spatial means of the official network's five stages."""
    official = official_lpips("alex")
    model = create_model("st-lpips-alex-nr")
    x, _ = _pair(80, 96, seed=9)
    with torch.no_grad():
        stages = official.net(official.scaling_layer(2 * x - 1))
        expected = torch.cat([s.mean(dim=(2, 3)) for s in stages], dim=1)
        feats = model.features(x)
        torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model(x), model.head(feats))
    assert model.mode.value == "nr" and not model.lower_better
    roles = [f["role"] for f in model.weights_source.describe()["files"]]
    assert roles == ["ST-LPIPS alex trunk + lin", "ridge head"]
    with pytest.raises(InputError, match="no-reference"):
        model.features(x, x)


@pytest.mark.slow
def test_nr_head_reproduces_its_recorded_heldout_correlation() -> None:
    """The shipped ridge head on all held-out images of the embedded dataset: the recorded SRCC/PLCC."""
    import json
    from importlib import resources

    from scipy import stats

    from robustbench_iqa.data.registry import create_dataset

    record = json.loads((resources.files("robustbench_iqa") / "weights" / "st-lpips-alex-nr-head.json").read_text())
    model = create_model("st-lpips-alex-nr")
    _, test = create_dataset("default").split(seed=0)
    pred = []
    with torch.no_grad():
        for s in range(0, len(test), 32):
            pred += model(torch.stack([test.load(i)[0] for i in range(s, min(s + 32, len(test)))])).tolist()
    labels = [smp.score for smp in test.samples]
    assert stats.spearmanr(pred, labels).statistic == pytest.approx(record["heldout_srcc"], abs=1e-3)
    assert stats.pearsonr(pred, labels).statistic == pytest.approx(record["heldout_plcc"], abs=1e-3)


@pytest.mark.parametrize("name", ["st-lpips-alex-nr", "st-lpips-alex", "st-lpips-vgg"])
def test_fs_iqa_certifies_on_the_real_networks(name: str) -> None:
    """The shipped FS-IQA heads: a certificate with S^l <= S <= S^u and eps_x = sigma_f / ||J_B(x)|| > 0."""
    from robustbench_iqa.certify.defense import create_defense

    model = create_model(name)
    fs = create_defense("fs-iqa", model, sigma=0.25)
    x, ref = _pair(64, 64, seed=10)
    r = ref[:1] if model.full_reference else None
    (res,) = fs.certify(x[:1], r, n=200, alpha=0.99, generator=torch.Generator().manual_seed(0), lipschitz=False)
    assert not res.abstained and res.lower <= res.score <= res.upper
    assert res.eps_x is not None and res.spectral_norm is not None
    assert res.eps_x == pytest.approx(0.25 / res.spectral_norm)


def test_cli_scores_a_pair_and_refuses_a_wrong_file_with_one_line(tmp_path: Any, capsys: Any) -> None:
    from robustbench_iqa.cli import main
    from robustbench_iqa.data.images import save_image
    from robustbench_iqa.models.stlpips import package_weights

    x, ref = _pair(48, 64, seed=12)
    save_image(x[0], tmp_path / "x.png")
    save_image(ref[0], tmp_path / "r.png")
    args = ["predict", "--defense", "none", "--image", str(tmp_path / "x.png"), "--ref", str(tmp_path / "r.png"),
            "--json", "--no-progress"]
    assert main([*args, "--model", "st-lpips-alex"]) == 0
    import json

    row = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert row["score"] > 0
    assert main([*args, "--model", "st-lpips-vgg", "--weights", str(package_weights("alex"))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "does not fit the ST-LPIPS vgg network" in err
