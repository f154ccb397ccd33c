"""The embedded default models ``default-nr`` and ``default-fr`` with their shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from scipy import stats

from robustbench_iqa.data.registry import create_dataset
from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import Backbone, Mode
from robustbench_iqa.models.embedded import EmbeddedFR, EmbeddedNR, shipped_weights
from robustbench_iqa.models.registry import create_model, list_models
from tests.toy_models import random_images

# Held-out thresholds, comfortably below what the shipped weights reach
# (see robustbench_iqa/weights/embedded-training.json).
MIN_SRCC = {"default-nr": 0.5, "default-fr": 0.85}


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return {name: create_model(name) for name in ("default-nr", "default-fr")}


def _pair(b: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ref = random_images(b, h, w, seed=seed)
    x = (ref + 0.1 * random_images(b, h, w, seed=seed + 1) - 0.05).clamp(0, 1)
    return x, ref


def test_registered_with_metadata(models: dict[str, torch.nn.Module]) -> None:
    assert {"default-nr", "default-fr"} <= set(list_models())
    nr, fr = models["default-nr"], models["default-fr"]
    assert nr.mode is Mode.NR and not nr.lower_better and nr.score_range == (0.0, 1.0)
    assert fr.mode is Mode.FR and fr.lower_better and fr.score_range == (0.0, 1.0)
    assert not nr.training and not fr.training


@pytest.mark.parametrize("size", [(32, 32), (37, 53), (64, 48)])
def test_any_size_gives_finite_scores_in_range(models: dict[str, torch.nn.Module], size: tuple[int, int]) -> None:
    x, ref = _pair(3, *size)
    with torch.no_grad():
        s_nr = models["default-nr"](x)
        s_fr = models["default-fr"](x, ref)
        f_nr = models["default-nr"].features(x)
        f_fr = models["default-fr"].features(x, ref)
    for s in (s_nr, s_fr):
        assert s.shape == (3,) and torch.isfinite(s).all() and (s >= 0).all() and (s <= 1).all()
    assert f_nr.shape == (3, 128) and f_fr.shape == (3, 128)
    assert Backbone(create_model("default-nr"))(x).shape == (3, 128)


def test_input_gradients_are_finite_and_nonzero(models: dict[str, torch.nn.Module]) -> None:
    x, ref = _pair(2, 48, 64)
    for name, args in (("default-nr", ()), ("default-fr", (ref,))):
        xg = x.clone().requires_grad_(True)
        models[name](xg, *args).sum().backward()
        assert xg.grad is not None and torch.isfinite(xg.grad).all()
        assert xg.grad.abs().sum(dim=(1, 2, 3)).min() > 0, name


def test_eval_mode_is_deterministic(models: dict[str, torch.nn.Module]) -> None:
    x, ref = _pair(2, 40, 40, seed=3)
    with torch.no_grad():
        a = models["default-fr"](x, ref), models["default-nr"](x)
        b = create_model("default-fr")(x, ref), create_model("default-nr")(x)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)


def test_fr_reference_is_untouched_and_required(models: dict[str, torch.nn.Module]) -> None:
    fr = models["default-fr"]
    x, ref = _pair(2, 32, 48)
    ref_before = ref.clone()
    xg = x.clone().requires_grad_(True)
    fr(xg, ref).sum().backward()
    assert torch.equal(ref, ref_before) and ref.grad is None
    with torch.no_grad():
        same, moved = fr(ref, ref), fr(x, ref)
    assert (same < moved).all(), "the distance of a reference to itself must be the smallest"
    with pytest.raises(InputError, match="reference"):
        fr(x)
    with pytest.raises(InputError, match="same shape"):
        fr(x, ref[..., :16])


@pytest.fixture(scope="module")
def heldout(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RBIQA_CACHE", str(tmp_path_factory.mktemp("rbiqa-cache")))
        _, test = create_dataset("default").split(seed=0, train_fraction=0.8)
    xs, refs = zip(*(test.load(i) for i in range(len(test))), strict=True)
    return torch.stack(xs), torch.stack(refs), np.array([s.score for s in test])


@pytest.mark.parametrize("name", ["default-nr", "default-fr"])
def test_heldout_correlation_with_weak_labels(
    models: dict[str, torch.nn.Module], heldout: tuple[torch.Tensor, torch.Tensor, np.ndarray], name: str
) -> None:
    x, ref, y = heldout
    model = models[name]
    with torch.no_grad():
        s = torch.cat([model(x[i : i + 64], ref[i : i + 64] if model.full_reference else None)
                       for i in range(0, len(x), 64)]).numpy()
    quality = -s if model.lower_better else s
    srcc = stats.spearmanr(quality, y).statistic
    plcc = stats.pearsonr(quality, y).statistic
    assert srcc > MIN_SRCC[name] and plcc > MIN_SRCC[name] - 0.1, (srcc, plcc)
    record = json.loads((shipped_weights(name).parent / "embedded-training.json").read_text())
    assert record["models"][name]["heldout_srcc"] == pytest.approx(srcc, abs=0.02)


def test_shipped_weights_are_small() -> None:
    for name in ("default-nr", "default-fr"):
        assert shipped_weights(name).stat().st_size < 1_000_000


def test_local_weights_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = EmbeddedNR()
    path = tmp_path / "nr.safetensors"
    save_file(model.state_dict(), str(path))
    loaded = create_model("default-nr", weights=path)
    x = random_images(2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)


def test_bad_weights_files_raise_input_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent.safetensors"
    with pytest.raises(InputError, match="absent.safetensors"):
        create_model("default-nr", weights=missing)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00\x01 not a safetensors file" * 10)
    with pytest.raises(InputError, match="corrupt.safetensors"):
        create_model("default-fr", weights=corrupt)
    wrong = tmp_path / "wrong.safetensors"
    save_file(EmbeddedFR().state_dict(), str(wrong))
    with pytest.raises(InputError, match="does not fit default-nr"):
        create_model("default-nr", weights=wrong)
