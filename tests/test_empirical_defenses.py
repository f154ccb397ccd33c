"""Empirical (uncertified) defenses: transforms vs independent references, BPDA, EOT, adaptive attacks, CLI."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from robustbench_iqa import create_dataset, create_model
from robustbench_iqa.attacks.checks import Flag, compare_white_black
from robustbench_iqa.attacks.eot import eot_objective
from robustbench_iqa.attacks.gradient import IFGSM
from robustbench_iqa.attacks.random_search import RandomSearch
from robustbench_iqa.certify.defense import (
    DEFENSES,
    CertifiedDefense,
    Defense,
    create_defense,
    list_defenses,
)
from robustbench_iqa.certify.purification import (
    gaussian_blur,
    median_filter,
    reduce_bit_depth,
    resize_down_up,
)
from robustbench_iqa.certify.random_resize import XIE_SCALE, draw_transforms, padded_size
from robustbench_iqa.errors import InputError

EMPIRICAL = list_defenses(certified=False)
"""Every registered empirical defense (the suite ships seven)."""
EPS = 4 / 255


@pytest.fixture(scope="module")
def images() -> dict[str, torch.Tensor]:
    _, test = create_dataset("default").split(seed=0)
    xs, refs = zip(*(test.load(i) for i in range(2)), strict=True)
    crop = (slice(None), slice(None), slice(32, 64), slice(40, 88))  # central 32x48 crops: fast, same code
    return {"x": torch.stack(xs)[crop].contiguous(), "ref": torch.stack(refs)[crop].contiguous()}  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def models() -> dict[str, object]:
    return {name: create_model(name) for name in ("default-nr", "default-fr")}


def _pair(models: dict, images: dict, model_name: str) -> tuple:
    m = models[model_name]
    return m, images["x"], (images["ref"] if m.full_reference else None)


def _libjpeg_round_trip(x: torch.Tensor, quality: int) -> torch.Tensor:
    """torchvision's libjpeg binding (another wrapper than Pillow's), the reference for the JPEG defense."""
    import warnings

    io_mod = pytest.importorskip("torchvision.io")
    if not hasattr(io_mod, "encode_jpeg"):
        pytest.skip("torchvision.io has no JPEG codec any more")
    u8 = (x * 255).round().clamp(0, 255).to(torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        out = io_mod.decode_jpeg(io_mod.encode_jpeg(list(u8), quality=quality))
    return torch.stack(out).float() / 255


def test_every_empirical_defense_is_registered_as_such() -> None:
    assert {"bit-depth", "gaussian-blur", "jpeg", "median", "purifier", "random-resize", "resize"} <= set(EMPIRICAL)
    for name in EMPIRICAL:
        meta = DEFENSES.metadata(name)
        assert meta["noise"] is False and meta["space"] == "input"
    suite = {n: DEFENSES.metadata(n) for n in ("bit-depth", "gaussian-blur", "jpeg", "median", "purifier",
                                               "random-resize", "resize")}
    for name, meta in suite.items():
        assert meta["statistic"] == "mean"
        assert meta["randomized"] is (name == "random-resize")
        assert meta["trained"] is (name == "purifier") and (meta["artifact"] == "denoiser") is (name == "purifier")


@pytest.mark.parametrize("model_name", ["default-nr", "default-fr"])
@pytest.mark.parametrize("name", EMPIRICAL)
def test_empirical_defense_predicts_on_embedded_model(name: str, model_name: str, models: dict, images: dict) -> None:
    m, x, ref = _pair(models, images, model_name)
    d = create_defense(name, m, sigma=0.0)
    assert isinstance(d, Defense) and not isinstance(d, CertifiedDefense)
    assert d.sigma == 0.0 and d.mode == m.mode and d.lower_better == m.lower_better and d.eot_aggregate == "mean"
    assert d.randomized is DEFENSES.metadata(name)["randomized"]
    ident = d.identity()
    assert ident["defense"] == name and ident["sigma"] == 0.0 and ident["settings"]
    assert (ident["artifact_sha256"] is not None) is (name == "purifier")

    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(3)

    pred = d.predict(x, ref, n=8, generator=gen())
    assert pred.shape == (2,) and bool(torch.isfinite(pred).all())
    assert bool((pred >= 0).all() and (pred <= 1).all())  # the models' sigmoid range
    v = d.noisy_scores(x, ref, n=5, generator=gen())
    assert v.shape == (2, 5)
    if d.randomized:
        torch.testing.assert_close(d.predict(x, ref, n=5, generator=gen()), v.mean(dim=1))
        assert not torch.equal(v[:, 0], v[:, 1:].mean(dim=1))  # the draws differ
    else:  # one score, repeated; the same as predict, bit for bit, whatever n and the generator
        assert torch.equal(v, v[:, :1].expand(-1, 5)) and torch.equal(v[:, 0], pred)
        assert torch.equal(d.predict(x, ref), pred)


@pytest.mark.parametrize("quality", [10, 50, 90])
@pytest.mark.parametrize("model_name", ["default-nr", "default-fr"])
def test_jpeg_is_a_libjpeg_round_trip(quality: int, model_name: str, models: dict, images: dict) -> None:
    m, x, ref = _pair(models, images, model_name)
    d = create_defense("jpeg", m, sigma=0.0, quality=quality)
    jpeg = _libjpeg_round_trip(x, quality)
    torch.testing.assert_close(d.transform(x), jpeg, rtol=0, atol=0)  # bit-identical decoded pixels
    assert (jpeg - x).abs().mean() > 0.5 / 255  # lossy: the transform did something
    want = m(jpeg, None if ref is None else _libjpeg_round_trip(ref, quality))
    torch.testing.assert_close(d.predict(x, ref), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bits", [1, 3, 4, 8])
def test_bit_depth_is_the_nearest_level(bits: int) -> None:
    x = torch.rand(2, 3, 9, 11, generator=torch.Generator().manual_seed(bits))
    levels = np.linspace(0.0, 1.0, 2**bits)
    xn = x.numpy().astype(np.float64)
    want = levels[np.abs(xn[..., None] - levels).argmin(axis=-1)]  # brute force: closest of the 2^b levels
    np.testing.assert_allclose(reduce_bit_depth(x, bits=bits).numpy(), want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("k", [3, 5])
def test_median_and_blur_match_scipy(k: int) -> None:
    x = torch.rand(2, 3, 13, 17, generator=torch.Generator().manual_seed(k))
    xn = x.numpy().astype(np.float64)
    # torch "reflect" padding (d c b | a b c d) is scipy's "mirror"
    np.testing.assert_array_equal(median_filter(x, kernel_size=k).numpy(),
                                  ndimage.median_filter(x.numpy(), size=(1, 1, k, k), mode="mirror"))
    std = 0.3 * ((k - 1) / 2 - 1) + 0.8
    want = ndimage.gaussian_filter(xn, sigma=(0, 0, std, std), radius=(0, 0, k // 2, k // 2), mode="mirror")
    np.testing.assert_allclose(gaussian_blur(x, kernel_size=k, std=std).numpy(), want, rtol=0, atol=1e-6)
    d = create_defense("gaussian-blur", create_model("default-nr"), sigma=0.0, kernel_size=k)
    assert d.blur_std == pytest.approx(std)  # OpenCV's rule: 0.8 for 3x3


def test_resize_matches_pil_bilinear() -> None:
    x = torch.rand(1, 3, 20, 30, generator=torch.Generator().manual_seed(0))
    out = resize_down_up(x, factor=0.5)
    for c in range(3):
        small = Image.fromarray(x[0, c].numpy()).resize((15, 10), Image.Resampling.BILINEAR)
        back = np.array(small.resize((30, 20), Image.Resampling.BILINEAR))
        np.testing.assert_allclose(out[0, c].numpy(), back, rtol=0, atol=1e-5)


def test_random_resize_draws_and_transform_against_brute_force(models: dict, images: dict) -> None:
    h, w = 32, 48
    hp, wp = padded_size(h, w, max_scale=XIE_SCALE)
    assert (hp, wp) == (round(32 * 331 / 299), round(48 * 331 / 299))
    draws = draw_transforms(400, h, w, max_scale=XIE_SCALE, generator=torch.Generator().manual_seed(0))
    assert draws == draw_transforms(400, h, w, max_scale=XIE_SCALE, generator=torch.Generator().manual_seed(0))
    assert {d[0] for d in draws} == set(range(h, hp))  # every size of [H, Hp) is drawn
    for hh, ww, top, left in draws:
        assert w <= ww <= wp and 0 <= top <= hp - hh and 0 <= left <= wp - ww
    d = create_defense("random-resize", models["default-nr"], sigma=0.0)
    x = images["x"]
    hh, ww, top, left = draws[0]
    got = d.apply_draw(x, draws[0], (hp, wp))
    rows = (torch.arange(hh) * h // hh).tolist()  # nearest neighbour: source index floor(i H / h')
    cols = (torch.arange(ww) * w // ww).tolist()
    want = torch.zeros(2, 3, hp, wp)
    want[:, :, top : top + hh, left : left + ww] = x[:, :, rows][:, :, :, cols]
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["bit-depth", "jpeg"])
def test_bpda_gradient_is_the_models_gradient_at_the_transformed_image(name: str, models: dict, images: dict) -> None:
    m, x, _ = _pair(models, images, "default-nr")
    bpda = create_defense(name, m, sigma=0.0)
    exact = create_defense(name, m, sigma=0.0, gradient="exact")
    xg = x.clone().requires_grad_(True)
    (g_bpda,) = torch.autograd.grad(bpda.noisy_scores(xg, n=3).mean(dim=1).sum(), xg)
    (g_exact,) = torch.autograd.grad(exact.noisy_scores(xg, n=3).mean(dim=1).sum(), xg)
    assert bool(torch.isfinite(g_bpda).all()) and g_bpda.abs().amax() > 0
    assert g_exact.abs().amax() == 0  # piecewise constant: the un-approximated gradient vanishes
    y = bpda.transform(x).detach().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(m(y).sum(), y)  # d/dx f(T(x)) under BPDA = (grad f)(T(x))
    torch.testing.assert_close(g_bpda, g_ref)


@pytest.mark.parametrize("name", ["median", "gaussian-blur", "resize", "random-resize"])
def test_differentiable_transforms_keep_their_true_gradient(name: str, models: dict, images: dict) -> None:
    m, x, _ = _pair(models, images, "default-nr")
    d = create_defense(name, m, sigma=0.0)
    x = 0.1 + 0.8 * x  # away from the [0, 1] bounds, so that the central difference below is not clipped
    xg = x.clone().requires_grad_(True)
    v = d.noisy_scores(xg, n=2, generator=torch.Generator().manual_seed(0))
    (g,) = torch.autograd.grad(v.mean(dim=1).sum(), xg)
    assert bool(torch.isfinite(g).all()) and g.abs().amax() > 0
    if name in ("gaussian-blur", "resize"):  # smooth: <grad, u> is the central difference of S along u
        u = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        h = 1e-2
        assert bool(((x + h * u).clamp(0, 1) == x + h * u).all() and ((x - h * u).clamp(0, 1) == x - h * u).all())
        fd = (d.predict(x + h * u) - d.predict(x - h * u)) / (2 * h)
        torch.testing.assert_close((g * u).flatten(1).sum(1), fd, rtol=0.05, atol=1e-4)


def test_deterministic_defense_scores_once_per_call(models: dict, images: dict) -> None:
    m, x, _ = _pair(models, images, "default-nr")
    d = create_defense("jpeg", m, sigma=0.0)
    calls = []
    hook = m.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    try:
        d.noisy_scores(x, n=500)
        d.predict(x, n=500)
    finally:
        hook.remove()
    assert calls == [2, 2]


@pytest.mark.parametrize("model_name", ["default-nr", "default-fr"])
@pytest.mark.parametrize("name", ["jpeg", "bit-depth"])
def test_adaptive_bpda_attack_moves_the_defended_score_and_plain_gradient_is_flagged(
    name: str, model_name: str, models: dict, images: dict
) -> None:
    m, x, ref = _pair(models, images, model_name)
    # FR: lower the apparent quality (one of the two crops is close to its reference, whose distance
    # is already near the model's floor); NR: raise it
    target = "decrease" if m.full_reference else "increase"
    attack = IFGSM(eps=EPS, steps=5)
    d = create_defense(name, m, sigma=0.0)
    obj = eot_objective(d, n=2, eval_n=1, target=target)
    adaptive = attack.run(obj, x, ref)
    assert all(r.improvement > 0 for r in adaptive.records)  # recorded by predict: the real defended score
    assert all(c.ok for c in adaptive.checks)
    assert bool((obj.gain(d.predict(adaptive.adv, ref)) > obj.gain(d.predict(x, ref))).all())
    masked = create_defense(name, m, sigma=0.0, gradient="exact")
    plain = attack.run(eot_objective(masked, n=2, eval_n=1, target=target), x, ref)
    assert all(r.improvement == 0 and r.zero_grad_steps == 1 for r in plain.records)
    assert all({Flag.ZERO_GRADIENT, Flag.NO_PROGRESS} <= set(c.flags) for c in plain.checks)
    if name == "bit-depth":  # a black-box attack beats the masked gradient: the masking check flags it
        black = RandomSearch(eps=EPS, queries=30).run(eot_objective(masked, n=1, eval_n=1, target=target), x, ref,
                                                      generator=torch.Generator().manual_seed(0))
        masking = compare_white_black(plain.improvements, black.improvements)
        assert masking.flagged and masking.n_black_better == 2


def test_eot_attack_on_random_resize_moves_the_expected_score(models: dict, images: dict) -> None:
    m, x, _ = _pair(models, images, "default-nr")
    d = create_defense("random-resize", m, sigma=0.0)
    obj = eot_objective(d, n=4, generator=torch.Generator().manual_seed(0), eval_n=16, eval_seed=1)
    res = IFGSM(eps=EPS, steps=4).run(obj, x)
    assert all(r.improvement > 0 and r.eot_draws == 4 and r.eot_spread is not None for r in res.records)
    fresh = d.predict(res.adv, n=64, generator=torch.Generator().manual_seed(9))  # draws the attack never saw
    clean = d.predict(x, n=64, generator=torch.Generator().manual_seed(9))
    assert bool((fresh > clean).all())


def test_settings_are_checked(models: dict) -> None:
    m = models["default-nr"]
    bad = [("jpeg", {"sigma": 0.25}), ("jpeg", {"quality": 0}), ("jpeg", {"qualty": 50}), ("bit-depth", {"bits": 9}),
           ("median", {"kernel_size": 4}), ("gaussian-blur", {"blur_std": -1.0}), ("resize", {"factor": 1.0}),
           ("random-resize", {"max_scale": 1.0}), ("random-resize", {"padding": "wrap"}),
           ("bit-depth", {"gradient": "straight-through"})]
    for name, kw in bad:
        with pytest.raises(InputError):
            create_defense(name, m, **({"sigma": 0.0} | kw))
    with pytest.raises(InputError, match="too small"):
        create_defense("median", m, sigma=0.0, kernel_size=5).predict(torch.rand(1, 3, 2, 2))


def test_purifier_checkpoint_is_checked(models: dict) -> None:
    from robustbench_iqa.certify.denoised import shipped_denoiser
    from robustbench_iqa.certify.purifier import shipped_purifier

    dms = shipped_denoiser("dms", "default-nr", 0.25)
    assert dms is not None
    with pytest.raises(InputError, match="not a purifier"):
        create_defense("purifier", models["default-nr"], sigma=0.0, denoiser=dms)
    path = shipped_purifier()
    assert path is not None
    record = json.loads((path.parent / "purifier-training.json").read_text())
    assert record["file"] == path.name and record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    d = create_defense("purifier", models["default-nr"], sigma=0.0)
    assert d.identity()["artifact_sha256"] == record["sha256"]


def test_cli_attack_with_empirical_defenses(capsys: pytest.CaptureFixture[str]) -> None:
    from robustbench_iqa.cli import main

    base = ["attack", "--model", "default-nr", "--dataset", "default", "--steps", "2", "--limit", "2",
            "--no-progress", "--eot", "4", "--n", "3"]
    assert main([*base, "--defense", "jpeg", "--json"]) == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.strip().splitlines()]
    rows, summary = lines[:-1], lines[-1]
    assert len(rows) == 2 and summary["summary"] is True and summary["defense"] == "jpeg"
    assert all(r["improvement"] >= 0 and "flags" in r for r in rows)
    assert main([*base, "--defense", "random-resize"]) == 0
    out = capsys.readouterr().out
    assert "robustness" in out and "flags" in out
    assert main([*base, "--defense", "jpeg", "--sigma", "0.25"]) == 2
    assert "--sigma does not apply to defense 'jpeg'" in capsys.readouterr().err


def test_cli_certify_refuses_and_predict_takes_empirical_defenses(capsys: pytest.CaptureFixture[str]) -> None:
    from robustbench_iqa.cli import main

    assert main(["certify", "--model", "default-nr", "--dataset", "default", "--limit", "1", "--defense",
                 "median"]) == 2
    assert "empirical" in capsys.readouterr().err
    assert main(["predict", "--model", "default-fr", "--dataset", "default", "--limit", "2", "--defense", "median",
                 "--json", "--no-progress"]) == 0
    rows = [json.loads(s) for s in capsys.readouterr().out.strip().splitlines()]
    assert len(rows) == 2 and all(0 <= r["score"] <= 1 for r in rows)


def test_shipped_purifier_reproduces_its_record_and_purifies() -> None:
    from scipy import stats

    from robustbench_iqa.attacks.objective import Objective
    from robustbench_iqa.certify.denoiser import DnCNN
    from robustbench_iqa.certify.purifier import shipped_purifier

    path = shipped_purifier()
    assert path is not None
    record = json.loads((path.parent / "purifier-training.json").read_text())
    model = create_model("default-nr")
    d = create_defense("purifier", model, sigma=0.0)
    assert isinstance(d.purifier, DnCNN) and d.purifier.residual[-1].weight.abs().sum() > 0  # trained, not identity
    _, test = create_dataset("default").split(seed=0)
    xs = torch.stack([test.load(i)[0] for i in range(len(test))])
    labels = [s.score for s in test.samples]
    srcc = stats.spearmanr(d.predict(xs).numpy(), labels).statistic
    assert srcc == pytest.approx(record["heldout"]["default-nr"]["srcc"], abs=0.005)
    # held-out I-FGSM examples come out closer to the clean images on average (recorded: +1.9 dB over
    # 64 images; on these 8: +0.7 dB, 6 of 8 closer); an untrained (identity) purifier gives 0 dB
    x = xs[:8]
    adv = IFGSM(eps=EPS, steps=10).run(Objective.from_model(model), x).adv  # against the undefended model

    def psnr(a: torch.Tensor) -> torch.Tensor:
        return 10 * torch.log10(1 / ((a - x) ** 2).mean(dim=(1, 2, 3)))

    with torch.no_grad():
        gain_db = psnr(d.transform(adv)) - psnr(adv)
    assert float(gain_db.mean()) > 0.3 and int((gain_db > 0).sum()) >= 5, gain_db
