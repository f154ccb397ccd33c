"""The IQA attacks of the literature against independent references: Korhonen & You's map (scipy),
MADC's level set, the perceptual bound, SSIM/PSNR (scikit-image) and the budget calibration (closed form)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from robustbench_iqa.attacks import (
    FGSM,
    MADC,
    KorhonenAttack,
    Objective,
    PerceptualBoundedAttack,
    QualityFloor,
    calibrate_budget,
    psnr,
    spatial_activity_map,
    ssim,
)
from robustbench_iqa.attacks.calibration import FLOORS
from robustbench_iqa.attacks.presets import (
    CALIBRATION_FILE,
    PresetTable,
    capped,
    preset_eps,
    shipped_presets,
)
from robustbench_iqa.attacks.registry import attack_info, list_attacks
from robustbench_iqa.attacks.similarity import mse
from robustbench_iqa.attacks.threat import norms, per_image_eps, project, random_in_ball
from robustbench_iqa.errors import InputError
from tests.toy_models import ToyNR, random_images


def test_spatial_activity_map_matches_scipy() -> None:
    x = random_images(2, 20, 24, seed=0)
    got = spatial_activity_map(x)
    sobel = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], dtype=float) / 8
    disc = np.array([[0, 1, 1, 1, 0]] + [[1] * 5] * 3 + [[0, 1, 1, 1, 0]], dtype=bool)
    for k in range(2):
        y = (x[k].double().numpy() * np.array([0.299, 0.587, 0.114]).reshape(3, 1, 1)).sum(axis=0)
        e = ndimage.correlate(y, sobel) ** 2 + ndimage.correlate(y, sobel.T) ** 2
        inner = np.zeros_like(e)
        inner[1:-1, 1:-1] = e[1:-1, 1:-1]
        want = ndimage.grey_dilation(inner / inner.max(), footprint=disc, mode="constant", cval=0.0)
        np.testing.assert_allclose(got[k, 0].numpy(), want, atol=1e-5)
    flat = spatial_activity_map(torch.full((1, 3, 8, 8), 0.3))
    assert torch.equal(flat, torch.ones_like(flat))  # max activity 0: the map is all ones


def test_korhonen_first_step_is_a_masked_sign_step() -> None:
    """Adam's first step is alpha * g / (|g| + 1e-8) with g = grad * map: a sign step where the map is not ~0."""
    model = ToyNR()
    x = random_images(2, 16, 16, seed=1) * 0.5 + 0.25  # away from the box
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg).sum(), xg)
    g = grad * spatial_activity_map(x)
    res = KorhonenAttack(eps=0.1, steps=1, step_size=0.01).run(Objective.from_model(model), x)
    assert torch.allclose(res.adv - x, 0.01 * g / (g.abs() + 1e-8), atol=1e-7)
    assert float((res.adv - x).abs().max()) == pytest.approx(0.01, rel=1e-3)


def test_madc_holds_mse_and_ssim() -> None:
    model = ToyNR()
    x = random_images(3, 24, 24, seed=2)
    obj = Objective.from_model(model)
    for hold, norm, eps, tol in (("mse", "l2", 1.0, 1e-3), ("ssim", "linf", 8 / 255, 0.05)):
        atk = MADC(eps=eps, steps=4, norm=norm, hold=hold)
        res = atk.run(obj, x, generator=torch.Generator().manual_seed(0))
        g = torch.Generator().manual_seed(0)  # the start the attack drew: its level h*
        e = per_image_eps(eps, x)
        start = project(x + random_in_ball(x, e, norm, g), x, e, norm)
        level = atk.held(start, x)
        moved = res.improvements > 0
        assert int(moved.sum()) >= 2
        held = atk.held(res.adv, x)
        scale = level if hold == "mse" else 1 - level
        assert bool(((held - level).abs() <= tol * scale)[moved].all()), (held, level)
        assert float(norms(res.adv - x, norm).max()) <= eps + 1e-5


def test_madc_direction_is_orthogonal_to_the_held_gradient() -> None:
    other = ToyNR(seed=5)
    atk = MADC(eps=0.1, steps=1, hold=lambda z, x0: other(z), norm="l2", random_start=False)
    x = random_images(2, 16, 16, seed=3)
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    state = atk.init_state(x, None)
    step = atk.step(x, grad, torch.full((2,), 0.05), state) - x
    xg = x.clone().requires_grad_(True)
    (gh,) = torch.autograd.grad(other(xg).sum(), xg)
    cos = (step * gh).reshape(2, -1).sum(1) / (step.reshape(2, -1).norm(dim=1) * gh.reshape(2, -1).norm(dim=1))
    assert float(cos.abs().max()) < 1e-4
    with pytest.raises(InputError):
        MADC(eps=0.1, hold="lpips")


def test_perceptual_bound_is_exact_and_inactive_when_met() -> None:
    x = random_images(2, 24, 24, seed=4)
    atk = PerceptualBoundedAttack(eps=0.2, steps=3, max_distance=0.03)
    res = atk.run(Objective.from_model(ToyNR()), x)
    assert float(ssim(res.adv, x).min()) >= 0.97 - 1e-6 and float(norms(res.adv - x, "linf").max()) <= 0.2 + 1e-6
    near = (x + 1e-4).clamp(0, 1)
    assert torch.equal(atk.limit(near, x), near)
    far = (x + 0.2 * torch.sign(torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))).clamp(0, 1)
    pulled = atk.limit(far, x)
    s = ssim(pulled, x)
    assert bool((s >= 0.97).all()) and bool((s <= 0.975).all())  # the bisection lands just inside the bound
    with pytest.raises(InputError):
        PerceptualBoundedAttack(eps=0.1, distance="lpips")


@pytest.mark.parametrize(("h", "w"), [(11, 11), (24, 31)])
def test_ssim_and_psnr_match_scikit_image(h: int, w: int) -> None:
    g = torch.Generator().manual_seed(h)
    x = torch.rand(2, 3, h, w, generator=g, dtype=torch.float64)
    y = (x + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    s, p = ssim(x, y), psnr(x, y)
    for k in range(2):
        a, b = x[k].permute(1, 2, 0).numpy(), y[k].permute(1, 2, 0).numpy()
        want = structural_similarity(a, b, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False)
        assert float(s[k]) == pytest.approx(want, abs=1e-10)
        assert float(p[k]) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-9)
    assert float(ssim(x, x).min()) == pytest.approx(1.0) and math.isinf(float(psnr(x, x)[0]))
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ssim(xr, y).sum(), xr)
    assert bool(torch.isfinite(grad).all()) and float(grad.abs().max()) > 0
    with pytest.raises(InputError):
        ssim(x[..., :10, :10], y[..., :10, :10])


def test_calibration_of_fgsm_on_a_linear_score_matches_the_closed_form() -> None:
    """FGSM on a linear score moves every pixel by exactly eps: PSNR = -20 log10(eps), so 40 dB is eps = 0.01."""
    x = random_images(3, 16, 16, seed=5) * 0.5 + 0.25
    w = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(0))
    obj = Objective(lambda z, ref=None: (z * w).sum(dim=(1, 2, 3)))
    cal = calibrate_budget(lambda e: FGSM(eps=e), obj, x, floor=QualityFloor(min_psnr=40.0), hi=0.1, iterations=12)
    # 12 halvings of log(1000) leave a bracket of 1000^(1/4096): the result is 0.01 within 0.2%.
    assert cal.eps <= 0.01 * (1 + 1e-9) and cal.eps >= 0.01 / 1000 ** (1 / 2 ** 12) * 0.999
    assert cal.psnr == pytest.approx(-20 * math.log10(cal.eps), rel=1e-4) and cal.changed == 3
    easy = calibrate_budget(lambda e: FGSM(eps=e), obj, x, floor=QualityFloor(min_psnr=10.0), hi=0.1)
    assert easy.eps == 0.1 and easy.probes == 1
    with pytest.raises(InputError):
        calibrate_budget(lambda e: FGSM(eps=e), obj, x, floor=QualityFloor(min_psnr=99.0), hi=0.1)
    with pytest.raises(InputError):
        QualityFloor()


def test_presets_are_the_calibration_the_script_wrote() -> None:
    """The presets are read from the shipped calibration file: the smallest eps over its rows."""
    data = json.loads(CALIBRATION_FILE.read_text())
    want: dict[tuple[str, str, str], float] = {}
    for r in data["rows"]:
        k = (r["attack"], r["norm"], r["floor"])
        want[k] = min(want.get(k, math.inf), r["eps"])
    table = shipped_presets()
    assert dict(table.eps) == want and table.size == (96, 128)
    # The values the table held when it was copied by hand (4 significant digits).
    assert f"{preset_eps('pgd', 'linf'):.4g}" == "0.0104" and f"{preset_eps('texture', 'l2'):.4g}" == "5.195"
    assert capped() == {("perceptual-bounded", "l2", "ssim0.9"), ("perceptual-bounded", "linf", "ssim0.9"),
                        ("square", "l2", "ssim0.9"), ("square", "linf", "ssim0.9"), ("texture", "l2", "ssim0.9")}
    assert preset_eps("pgd", "l2", size=(192, 256)) == pytest.approx(2 * table.eps[("pgd", "l2", "psnr40")])
    assert preset_eps("pgd", "linf", size=(192, 256)) == table.eps[("pgd", "linf", "psnr40")]
    # A Linf preset for PSNR 40 dB is at most 0.01 for attacks that fill the ball (|d| = eps everywhere).
    assert preset_eps("ifgsm", "linf") == pytest.approx(0.01, rel=0.15)


@pytest.mark.parametrize("name", [n for n in list_attacks() if n in shipped_presets().attacks()])
def test_every_calibrated_attack_has_a_preset_per_norm_and_floor(name: str) -> None:
    for norm in attack_info(name)["threat"]:
        for floor in FLOORS:
            assert preset_eps(name, norm, floor) > 0


def test_a_missing_preset_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no budget preset for attack 'sparse'.*--attacks sparse"):
        preset_eps("sparse", "linf")
    with pytest.raises(InputError, match="floors: psnr40, ssim0.9"):
        preset_eps("pgd", "linf", "psnr30")
    bad = tmp_path / "budgets.json"
    bad.write_text('{"rows": []}')
    with pytest.raises(InputError, match="not a budget calibration"):
        PresetTable.read(bad)
    one = {"settings": {"size": [10, 10], "hi": {"linf": 0.5}},
           "rows": [{"attack": "new", "norm": "linf", "floor": "psnr40", "model": m, "eps": e}
                    for m, e in (("a", 0.5), ("b", 0.3))]}
    t = PresetTable.from_calibration(one)
    assert t.get("new", "linf") == 0.3 and t.capped == frozenset()


def test_mse_shapes() -> None:
    with pytest.raises(InputError):
        mse(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


def _calibration_script():  # type: ignore[no-untyped-def]
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "calibrate_attack_budgets.py"
    spec = importlib.util.spec_from_file_location("calibrate_attack_budgets", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_script_derives_each_attack_s_effort_from_its_options() -> None:
    """The settings the script gives each attack are those recorded in the shipped calibration."""
    import argparse

    script = _calibration_script()
    args = argparse.Namespace(queries=100, steps=10, uap_steps=20)
    recorded = {r["attack"]: r["settings"] for r in json.loads(CALIBRATION_FILE.read_text())["rows"]}
    assert {a: script.settings_for(a, args) for a in recorded} == recorded


def test_merging_a_new_attack_keeps_the_other_rows_and_refuses_another_protocol() -> None:
    script = _calibration_script()
    old = {"settings": {"size": [96, 128], "hi": {"linf": 0.25}, "models": ["a"]},
           "rows": [{"attack": "pgd", "eps": 0.1}, {"attack": "new", "eps": 0.5}]}
    new = {"settings": {"size": [96, 128], "hi": {"linf": 0.25}, "models": ["b"]}, "rows": [{"attack": "new", "eps": 0.2}]}
    merged = script.merged(old, new)
    assert merged["rows"] == [{"attack": "pgd", "eps": 0.1}, {"attack": "new", "eps": 0.2}]
    with pytest.raises(SystemExit, match="settings differ"):
        script.merged(old, {**new, "settings": {**new["settings"], "size": [48, 64]}})
