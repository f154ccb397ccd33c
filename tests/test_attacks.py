"""Attacks: a parametrized table over attacks x threat models x {NR, FR} (foolbox ``AttackTestTarget`` style),
EOT on randomized defenses, the feature-space audit attack and the ``attack`` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustbench_iqa.attacks import (
    FGSM,
    IFGSM,
    MIFGSM,
    PGD,
    Objective,
    TextureMaskedAttack,
    ThreatModel,
    create_attack,
    eot_objective,
    feature_space_attack,
    soft_median,
    texture_mask,
)
from robustbench_iqa.attacks.threat import norms, project, random_in_ball
from robustbench_iqa.errors import InputError
from tests.toy_models import ToyFR, ToyNR, random_images

TOL = 1e-5
EPS = {"linf": 8 / 255, "l2": 0.5}


def _attack(name: str, norm: str):
    eps = EPS[norm]
    if name == "fgsm":
        return FGSM(eps=eps, norm=norm)
    if name == "ifgsm":
        return IFGSM(eps=eps, steps=5, norm=norm)
    if name == "mifgsm":
        return MIFGSM(eps=eps, steps=5, norm=norm)
    if name == "pgd":
        return PGD(eps=eps, steps=5, norm=norm)
    return TextureMaskedAttack(eps=eps, steps=5, norm=norm)


def _setup(kind: str):
    if kind == "nr":
        return ToyNR(), random_images(6, 32, 32, seed=3), None
    return ToyFR(), random_images(6, 32, 32, seed=4), random_images(6, 32, 32, seed=5)


@pytest.mark.parametrize("kind", ["nr", "fr"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", ["fgsm", "ifgsm", "mifgsm", "pgd", "texture"])
@pytest.mark.parametrize("target", ["increase", "decrease"])
def test_attack_table(name: str, norm: str, kind: str, target: str) -> None:
    model, x, ref = _setup(kind)
    ref_before = None if ref is None else ref.clone()
    atk = _attack(name, norm)
    obj = Objective.from_model(model, target=target)
    res = atk.run(obj, x, ref, generator=torch.Generator().manual_seed(0))
    adv = res.adv
    # Budget, box, reference untouched.
    delta = adv - x
    assert float(norms(delta, norm).max()) <= EPS[norm] + TOL
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    if ref is not None:
        assert torch.equal(ref, ref_before)
    # Records agree with an independent evaluation.
    with torch.no_grad():
        clean, after = model(x, ref), model(adv, ref)
    assert torch.allclose(res.clean_scores, clean, atol=1e-6)
    assert torch.allclose(res.adv_scores, after, atol=1e-6)
    assert torch.allclose(torch.tensor([r.l2 for r in res.records]), norms(delta, "l2"), atol=1e-6)
    assert torch.allclose(torch.tensor([r.linf for r in res.records]), norms(delta, "linf"), atol=1e-6)
    assert all(0 < r.iterations <= atk.steps for r in res.records)
    # The score moves in the wanted direction (in quality terms) for most images.
    quality_up = (after - clean) * (-1.0 if model.lower_better else 1.0)
    wanted = quality_up > 0 if target == "increase" else quality_up < 0
    assert int(wanted.sum()) >= 5, (quality_up, name, norm, kind)


def test_lower_better_means_raw_score_falls() -> None:
    model, x, ref = _setup("fr")
    res = IFGSM(eps=4 / 255, steps=3).run(Objective.from_model(model), x, ref)
    assert bool((res.adv_scores < res.clean_scores).all())


def test_toward_target_stops_early_and_approaches() -> None:
    model, x, _ = _setup("nr")
    with torch.no_grad():
        clean = model(x)
    t = float(clean[0])  # image 0 starts on target: it must not move
    obj = Objective.from_model(model, target="toward", target_score=t)
    res = IFGSM(eps=2 / 255, steps=5, norm="linf").run(obj, x)
    assert res.records[0].iterations == 0 and torch.equal(res.adv[0], x[0])
    far = float(clean.max()) + 0.05
    obj = Objective.from_model(model, target="toward", target_score=far)
    res = IFGSM(eps=2 / 255, steps=5, norm="linf").run(obj, x)
    assert bool(((res.adv_scores - far).abs() < (clean - far).abs()).all())
    with pytest.raises(InputError):
        Objective.from_model(model, target="toward")


def test_ifgsm_first_step_is_fgsm_direction() -> None:
    """One I-FGSM step from x equals x + alpha sign(grad) clipped, computed by hand."""
    model, x, _ = _setup("nr")
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg).sum(), xg)
    expect = (x + 0.01 * g.sign()).clamp(0, 1)
    res = IFGSM(eps=0.01, steps=1, step_size=0.01).run(Objective.from_model(model), x)
    assert torch.allclose(res.adv, expect, atol=1e-7)


def test_pgd_random_start_is_reproducible_and_differs_from_ifgsm() -> None:
    model, x, _ = _setup("nr")
    obj = Objective.from_model(model)
    a = PGD(eps=0.03, steps=2).run(obj, x, generator=torch.Generator().manual_seed(7)).adv
    b = PGD(eps=0.03, steps=2).run(obj, x, generator=torch.Generator().manual_seed(7)).adv
    c = IFGSM(eps=0.03, steps=2, step_size=0.075 / 2).run(obj, x).adv
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_per_image_eps_override() -> None:
    model, x, _ = _setup("nr")
    eps = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    res = PGD(eps=1.0, steps=3, norm="l2").run(Objective.from_model(model), x, eps=eps,
                                               generator=torch.Generator().manual_seed(0))
    assert bool((norms(res.adv - x, "l2") <= eps + TOL).all())
    assert float(norms(res.adv[0] - x[0], "l2").max()) == 0.0


def test_projection_and_random_ball_against_closed_forms() -> None:
    x0 = torch.full((2, 3, 4, 4), 0.5)
    eps = torch.tensor([0.1, 0.2])
    d = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    p = project(x0 + d, x0, eps, "l2")
    # L2 projection of a point outside the ball is the radial one (no clipping needed here: |d|/||d|| small).
    expected = x0 + d * (eps / d.reshape(2, -1).norm(dim=1)).reshape(-1, 1, 1, 1)
    assert torch.allclose(p, expected.clamp(0, 1), atol=1e-6)
    q = project(x0 + d, x0, eps, ThreatModel.LINF)
    assert torch.allclose(q, torch.clamp(x0 + d, x0 - eps.reshape(-1, 1, 1, 1), x0 + eps.reshape(-1, 1, 1, 1)))
    r = random_in_ball(x0, eps, "l2", torch.Generator().manual_seed(1))
    assert bool((norms(r, "l2") <= eps + 1e-6).all())
    r = random_in_ball(x0, eps, "linf", torch.Generator().manual_seed(1))
    assert bool((norms(r, "linf") <= eps + 1e-6).all())


def test_texture_mask_hides_perturbation_in_flat_regions() -> None:
    x = torch.full((1, 3, 32, 32), 0.5)
    x[..., :, 16:] = torch.rand(1, 3, 32, 16, generator=torch.Generator().manual_seed(0))
    m = texture_mask(x)
    assert float(m[..., :, :10].max()) < 1e-6 and float(m.max()) == pytest.approx(1.0)
    res = TextureMaskedAttack(eps=8 / 255, steps=3).run(Objective.from_model(ToyNR()), x)
    d = (res.adv - x).abs()
    assert float(d[..., :, :10].max()) < 1e-6 < float(d[..., :, 20:].max())


def test_bad_settings_raise_input_error() -> None:
    with pytest.raises(InputError):
        IFGSM(eps=-0.1)
    with pytest.raises(InputError):
        IFGSM(eps=0.1, steps=0)
    with pytest.raises(InputError):
        IFGSM(eps=0.1, norm="l3")
    with pytest.raises(InputError):
        create_attack("nope", eps=0.1)
    with pytest.raises(InputError):
        IFGSM(eps=0.1).run(Objective.from_model(ToyNR()), torch.full((1, 3, 8, 8), 2.0))
    assert isinstance(create_attack("fgsm", eps=0.1, steps=None), FGSM)  # None: the class default


@pytest.mark.parametrize(("name", "settings", "hint"), [
    ("fgsm", {"eps": 0.1, "stpe_size": 0.3}, None),
    ("ifgsm", {"eps": 0.1, "stpe_size": 0.3}, "did you mean 'step_size'"),
    ("fgsm", {"eps": 0.1, "steps": 10}, None),  # FGSM takes one step: a steps setting is refused
    ("pgd", {"epss": 0.1}, "did you mean 'eps'"),
])
def test_unknown_attack_settings_raise(name: str, settings: dict, hint: str | None) -> None:  # type: ignore[type-arg]
    with pytest.raises(InputError, match=hint or "takes no argument"):
        create_attack(name, **settings)


def test_unknown_attack_name_suggests_the_closest() -> None:
    with pytest.raises(InputError, match="did you mean 'ifgsm'"):
        create_attack("ifsgm", eps=0.1)


# ------------------------------------------------------------------- EOT
class InputSmoothed(torch.nn.Module):
    """Tiny input-space Gaussian smoothing of ToyNR meeting the defense interface used by EOT."""

    sigma = 0.1
    lower_better = False
    score_range = (0.0, 1.0)
    name = "toy-smoothing"
    eot_aggregate = "soft-median"

    def __init__(self) -> None:
        super().__init__()
        self.base = ToyNR()

    def noisy_scores(self, x, ref=None, *, n, generator=None):
        e = torch.randn((x.shape[0], n, *x.shape[1:]), generator=generator) * self.sigma
        z = (x[:, None] + e).reshape(-1, *x.shape[1:])
        return self.base(z).reshape(x.shape[0], n)

    def predict(self, x, ref=None, *, n, generator=None):
        return self.noisy_scores(x, ref, n=n, generator=generator).median(dim=1).values


@pytest.mark.parametrize("aggregate", ["mean", "soft-median"])
@pytest.mark.parametrize("noise", ["fresh", "fixed"])
def test_eot_moves_the_smoothed_score(aggregate: str, noise: str) -> None:
    defense = InputSmoothed()
    x = random_images(4, 24, 24, seed=9)
    obj = eot_objective(defense, n=8, aggregate=aggregate, noise=noise,
                        generator=torch.Generator().manual_seed(1), eval_n=201, eval_seed=3)
    res = PGD(eps=0.05, steps=5).run(obj, x, generator=torch.Generator().manual_seed(2))
    # Independent check with other noise: the smoothed (median) score went up.
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        before = defense.predict(x, n=401, generator=g)
        g.manual_seed(123)
        after = defense.predict(res.adv, n=401, generator=g)
    assert int((after > before).sum()) >= 3
    assert bool((res.adv_scores > res.clean_scores).sum() >= 3)


def test_eot_on_fs_iqa_moves_defended_score() -> None:
    fs_iqa = pytest.importorskip("robustbench_iqa.certify.fs_iqa")
    from robustbench_iqa.certify.heads import FTN, Scorer
    from robustbench_iqa.models.base import Backbone

    torch.manual_seed(0)  # only the test seeds the untrained heads' init
    fs = fs_iqa.FeatureSmoothedIQA(Backbone(ToyNR()), FTN(16, 32), Scorer(32, 16), sigma=0.05)
    x = random_images(3, 24, 24, seed=10)
    obj = eot_objective(fs, n=16, generator=torch.Generator().manual_seed(0), eval_n=301)
    res = IFGSM(eps=0.1, steps=5).run(obj, x)
    assert bool((res.adv_scores > res.clean_scores).all())


def test_fixed_noise_needs_generator_and_soft_median_limits() -> None:
    with pytest.raises(InputError):
        eot_objective(InputSmoothed(), n=4, noise="fixed")
    v = torch.randn(3, 101, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(soft_median(v, bandwidth=1e-4), v.median(dim=1).values, atol=1e-6)
    assert torch.allclose(soft_median(v, bandwidth=1e4), v.mean(dim=1), atol=1e-5)


# --------------------------------------------------------- feature space
def test_feature_attack_beats_random_directions() -> None:
    model = ToyNR()
    x = random_images(3, 24, 24, seed=11)
    eps = torch.tensor([0.2, 0.5, 1.0])

    def fmap(z):
        return model.features(z)

    res = feature_space_attack(fmap, x, eps, steps=10, restarts=1, generator=torch.Generator().manual_seed(0))
    assert bool((res.input_norm <= eps + TOL).all())
    assert float(res.perturbation.add(x).min()) >= 0 and float(res.perturbation.add(x).max()) <= 1
    with torch.no_grad():
        f0 = fmap(x)
        achieved = (fmap(x + res.perturbation) - f0).norm(dim=1)
        assert torch.allclose(achieved, res.feature_change, atol=1e-5)
        g = torch.Generator().manual_seed(5)
        best_random = torch.zeros(3)
        for _ in range(20):
            d = torch.randn(x.shape, generator=g)
            d = d / d.reshape(3, -1).norm(dim=1).reshape(-1, 1, 1, 1) * eps.reshape(-1, 1, 1, 1)
            best_random = torch.maximum(best_random, (fmap((x + d).clamp(0, 1)) - f0).norm(dim=1))
    assert bool((res.feature_change >= best_random).all())
    assert res.premise_failed(0.0).all() and not res.premise_failed(1e9).any()


def test_feature_attack_uses_given_direction_on_linear_map() -> None:
    """For a linear map the optimum is eps * sigma_max along the top right-singular vector."""
    torch.manual_seed(0)
    a = torch.randn(5, 3 * 8 * 8)
    x = torch.full((1, 3, 8, 8), 0.5)
    _, s, vh = torch.linalg.svd(a, full_matrices=False)

    def fmap(z):
        return z.reshape(z.shape[0], -1) @ a.T

    res = feature_space_attack(fmap, x, 0.05, steps=5, restarts=0, direction=vh[0].reshape(1, 3, 8, 8))
    assert float(res.feature_change[0]) == pytest.approx(0.05 * float(s[0]), rel=1e-4)


# -------------------------------------------------------------------- CLI
def _fake_factories(monkeypatch: pytest.MonkeyPatch) -> None:
    from robustbench_iqa.cli import _common
    from robustbench_iqa.cli import attack as cli_attack

    def fake_model(args):
        return ToyFR() if args.model == "toy-fr" else ToyNR()

    def fake_items(args, model):
        x = random_images(args.limit or 3, 24, 24, seed=0)
        ref = random_images(x.shape[0], 24, 24, seed=1) if model.full_reference else None
        items = [_common.Item(f"img{i}", x[i], None if ref is None else ref[i], None, f"img{i}#0")
                 for i in range(x.shape[0])]
        return len(items), iter(items)

    monkeypatch.setattr(_common, "build_model", fake_model)
    monkeypatch.setattr(_common, "iter_items", fake_items)
    monkeypatch.setattr(cli_attack, "build_defense", lambda args, model: InputSmoothed())


@pytest.mark.parametrize("model", ["toy-nr", "toy-fr"])
def test_cli_attack_json(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], model: str) -> None:
    from robustbench_iqa.cli import main

    _fake_factories(monkeypatch)
    rc = main(["attack", "--model", model, "--dataset", "fake", "--attack", "ifgsm", "--norm", "l2",
               "--eps", "0.5", "--steps", "3", "--limit", "3", "--json", "--no-progress"])
    assert rc == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.strip().splitlines()]
    rows, summary = lines[:-1], lines[-1]
    assert len(rows) == 3 and summary["summary"] is True
    for r in rows:
        assert {"image", "clean_score", "adv_score", "l2", "linf"} <= set(r)
        assert r["l2"] <= 0.5 + TOL and r["gain"] > 0
    mean_abs = sum(r["gain"] for r in rows) / 3
    assert summary["absolute_gain"] == pytest.approx(mean_abs, rel=1e-6)


def test_cli_attack_defense_table(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from robustbench_iqa.cli import main

    _fake_factories(monkeypatch)
    rc = main(["attack", "--model", "toy-nr", "--dataset", "fake", "--attack", "pgd", "--eps", "0.03",
               "--steps", "2", "--limit", "2", "--defense", "toy", "--eot", "4", "--n", "51", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "robustness" in out and "img1" in out


@pytest.mark.parametrize(("extra", "kind"), [
    (["--attack", "pgd", "--restarts", "2", "--no-random-start", "--steps", "2"], "white"),
    (["--attack", "square", "--queries", "15"], "black"),
    (["--attack", "sparse", "--pixels", "3", "--queries", "10", "--eps", "1"], "black"),
])
def test_cli_attack_settings_and_flags(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                       extra: list[str], kind: str) -> None:
    from robustbench_iqa.attacks.checks import IMAGE_FLAGS
    from robustbench_iqa.cli import main

    _fake_factories(monkeypatch)
    base = ["attack", "--model", "toy-nr", "--dataset", "fake", "--limit", "3", "--json", "--no-progress"]
    assert main([*base, *extra]) == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.strip().splitlines()]
    rows, summary = lines[:-1], lines[-1]
    assert all("flags" in r and "improvement" in r and r["improvement"] >= 0 for r in rows)
    assert set(summary["flags"]) == {f.value for f in IMAGE_FLAGS}
    assert summary["flags"]["no-progress"] == sum("no-progress" in r["flags"] for r in rows)
    if kind == "white":
        assert all(r["iterations"] <= 4 and r["evaluations"] == 3 for r in rows)
    else:
        assert all(r["zero_grad_steps"] == 0 for r in rows)
    assert main([*base[:-2], "--no-progress", *extra]) == 0
    assert "flags" in capsys.readouterr().out


def test_cli_attack_settings_the_attack_does_not_take(capsys: pytest.CaptureFixture[str]) -> None:
    from robustbench_iqa.cli import main

    assert main(["attack", "--attack", "square", "--steps", "3", "--dataset", "x"]) == 2
    assert "takes no argument 'steps'" in capsys.readouterr().err
    assert main(["attack", "--attack", "pgd", "--restarts", "0", "--dataset", "x"]) == 2
    assert main(["attack", "--attack", "uap", "--perturbation", "/nonexistent.safetensors", "--dataset", "x"]) == 2


def test_cli_attack_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    from robustbench_iqa.cli import main

    assert main(["attack", "--eps", "-1", "--dataset", "x"]) == 2
    assert "eps" in capsys.readouterr().err
    assert main(["attack", "--target", "toward", "--dataset", "x"]) == 2
    assert "--target-score" in capsys.readouterr().err
    assert main(["attack", "--attack", "ifgsn", "--dataset", "default"]) == 2
    assert "did you mean 'ifgsm'" in capsys.readouterr().err


def _defaults_available() -> bool:
    from robustbench_iqa.data.registry import list_datasets
    from robustbench_iqa.models.registry import list_models

    return "default-nr" in list_models() and "default" in list_datasets()


@pytest.mark.skipif(not _defaults_available(), reason="embedded default model/dataset not built yet")
def test_cli_attack_end_to_end_on_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from robustbench_iqa.cli import main

    args = ["attack", "--model", "default-nr", "--dataset", "default", "--attack", "ifgsm", "--norm", "l2",
            "--eps", "0.1", "--steps", "3", "--limit", "2", "--json", "--no-progress",
            "--defense", "fs-iqa", "--sigma", "0.25", "--eot", "4", "--n", "101"]
    assert main(args) == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 3 and lines[-1]["summary"] is True
    assert all(r["l2"] <= 0.1 + TOL for r in lines[:2])


def test_cli_attack_out_resumes_to_the_same_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    from robustbench_iqa.cli import main
    from robustbench_iqa.store import RESULTS_FILE, ResultsStore

    args = ["attack", "--model", "default-fr", "--dataset", "default", "--norm", "l2", "--eps", "0.1",
            "--steps", "3", "--limit", "3", "--json", "--no-progress", "--defense", "fs-iqa", "--eot", "4",
            "--n", "101"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*args, "--out", str(a)]) == 0
    summary_a = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main([*args, "--out", str(b)]) == 0
    capsys.readouterr()
    con = sqlite3.connect(b / RESULTS_FILE)  # as if killed after the first image
    with con:
        con.execute("DELETE FROM rows WHERE id > (SELECT MIN(id) FROM rows)")
    con.close()
    assert main([*args, "--out", str(b), "--resume"]) == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.strip().splitlines()]
    assert len(lines) == 3  # two new rows, then the summary over all three
    assert lines[-1] == summary_a

    def rows(run: Path) -> list[str]:
        with ResultsStore.open(run) as st:
            return sorted(json.dumps(r, sort_keys=True) for r in st.iter_rows("attack"))

    assert rows(a) == rows(b) and len(rows(a)) == 3


def test_given_clean_scores_are_used_and_checked() -> None:
    """A caller attacking one batch at several budgets hands the clean scores on: same result."""
    model = ToyNR()
    x = random_images(3, 16, 16, seed=4)
    obj = Objective.from_model(model)
    clean = obj.evaluate(x, None)
    a = IFGSM(eps=0.05, steps=3).run(obj, x)
    b = IFGSM(eps=0.05, steps=3).run(obj, x, clean=clean)
    assert torch.equal(a.adv, b.adv) and [r.clean_score for r in a.records] == [r.clean_score for r in b.records]
    with pytest.raises(InputError, match="clean scores"):
        IFGSM(eps=0.05, steps=3).run(obj, x, clean=clean[:2])
