"""Query (black-box) attacks and the universal perturbation: closed forms, budgets, no gradients needed,
randomized defenses through their prediction."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from robustbench_iqa.attacks import (
    Objective,
    RandomSearch,
    SparseAttack,
    SquareAttack,
    UniversalPerturbation,
    create_attack,
    eot_objective,
)
from robustbench_iqa.attacks.random_search import GROW, SHRINK
from robustbench_iqa.attacks.search import halving_schedule, window_side
from robustbench_iqa.attacks.sparse import changed_pixels
from robustbench_iqa.attacks.square import dipole, pseudo_gaussian
from robustbench_iqa.attacks.threat import norms
from robustbench_iqa.attacks.universal import tile_to
from robustbench_iqa.errors import InputError
from tests.toy_models import ToyNR, random_images


def test_square_schedule_and_shapes() -> None:
    # Halvings at 10, 50, 200, ... of 10,000, rescaled to the query budget.
    assert halving_schedule(0.8, 1, 10000) == 0.8
    assert halving_schedule(0.8, 11, 10000) == 0.4
    assert halving_schedule(0.8, 51, 10000) == 0.2
    assert halving_schedule(0.8, 9000, 10000) == 0.8 / 2 ** 9
    assert halving_schedule(0.8, 2, 100) == 0.8 / 2 ** 2  # 2/100 -> 200 of 10,000: past 10 and 50
    assert window_side(0.05, 32, 48) == round(math.sqrt(0.05 * 32 * 48))
    assert window_side(1e-6, 32, 48, minimum=3) == 3 and window_side(10.0, 32, 48) == 32
    # Rings of a 3x3 bump: centre 1 + 1/4, border 1/4; a 5x5 centre 1 + 1/4 + 1/9.
    b = pseudo_gaussian(3, 3, torch.zeros(1))
    assert torch.allclose(b, torch.tensor([[0.25] * 3, [0.25, 1.25, 0.25], [0.25] * 3]))
    assert float(pseudo_gaussian(5, 5, torch.zeros(1))[2, 2]) == pytest.approx(1 + 1 / 4 + 1 / 9)
    d = dipole(7, torch.zeros(1), transpose=False)
    assert float(d.norm()) == pytest.approx(1.0) and bool((d[:, :3] > 0).all()) and bool((d[:, 3:] < 0).all())
    assert torch.equal(dipole(7, torch.zeros(1), transpose=True), d.T)


def test_square_l2_update_keeps_the_norm_at_eps() -> None:
    """Away from the box the mass-moving update gives ||delta'|| = eps exactly (paper Sec. 3.2)."""
    x0 = torch.full((3, 3, 24, 24), 0.5)
    atk = SquareAttack(eps=0.3, norm="l2", queries=10)
    g = torch.Generator().manual_seed(0)
    eps = torch.full((3,), 0.3)
    state = atk.init(x0, eps, g)
    assert torch.allclose(norms(state["x"] - x0, "l2"), eps, atol=1e-5)
    cur = state["x"]
    for i in range(2, 8):
        cur = atk.propose({"x": cur}, x0, eps, i, g)["x"]
        assert torch.allclose(norms(cur - x0, "l2"), eps, atol=1e-5)


def test_square_linf_candidates_are_ball_vertices_in_a_window() -> None:
    x0 = torch.full((2, 3, 20, 20), 0.5)
    atk = SquareAttack(eps=0.1, queries=10)
    g = torch.Generator().manual_seed(1)
    eps = torch.full((2,), 0.1)
    start = atk.init(x0, eps, g)["x"]
    assert torch.allclose((start - x0).abs(), torch.full_like(x0, 0.1))
    cand = atk.propose({"x": start}, x0, eps, 2, g)["x"]
    assert torch.allclose((cand - x0).abs(), torch.full_like(x0, 0.1))
    changed = (cand != start).any(dim=1)  # one square window per image
    for k in range(2):
        rows, cols = changed[k].nonzero(as_tuple=True)
        side = window_side(halving_schedule(atk.p_init, 2, 10), 20, 20)
        assert int(rows.max() - rows.min()) < side and int(cols.max() - cols.min()) < side


def test_sparse_changes_at_most_k_pixels_to_box_vertices() -> None:
    x = random_images(3, 16, 16, seed=4)
    obj = Objective.from_model(ToyNR(), target="decrease")
    res = SparseAttack(pixels=5, queries=30).run(obj, x, generator=torch.Generator().manual_seed(0))
    assert bool((changed_pixels(res.adv, x) <= 5).all()) and float(res.improvements.min()) >= 0
    moved = res.adv[res.adv != x]
    assert bool(((moved == 0) | (moved == 1)).all())  # eps = 1: the colour cube's corners
    one = SparseAttack(pixels=1, eps=0.1, queries=30).run(obj, x, generator=torch.Generator().manual_seed(0))
    assert bool((changed_pixels(one.adv, x) <= 1).all()) and float((one.adv - x).abs().max()) <= 0.1 + 1e-6
    with pytest.raises(InputError):
        SparseAttack(pixels=1, norm="l2")
    with pytest.raises(InputError):
        SparseAttack(pixels=16 * 16).run(obj, x)


def test_random_search_one_fifth_rule() -> None:
    atk = RandomSearch(eps=0.1, sigma=0.5)
    state = {"x": torch.zeros(3, 1), "sigma": torch.full((3,), 0.5)}
    state = atk.adapt(state, torch.tensor([True, False, True]))
    state = atk.adapt(state, torch.tensor([True, False, False]))
    expected = 0.5 * torch.tensor([GROW ** 2, SHRINK ** 2, GROW * SHRINK])
    assert torch.allclose(state["sigma"], expected.float())
    assert math.isclose(math.log(GROW) * 0.2, -math.log(SHRINK) * 0.8)  # stationary at 1/5 successes


def test_black_box_needs_no_gradient() -> None:
    """A score computed in numpy (no autograd graph at all) is attacked by every query attack."""
    w = np.random.default_rng(0).normal(size=(3, 12, 12))

    def score(x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return torch.from_numpy((x.detach().numpy() * w).sum(axis=(1, 2, 3)))

    x = random_images(2, 12, 12, seed=5).double()
    for atk in (SquareAttack(eps=0.05, queries=30), SquareAttack(eps=0.5, norm="l2", queries=30),
                RandomSearch(eps=0.05, queries=30), SparseAttack(pixels=3, queries=30)):
        res = atk.run(Objective(score), x, generator=torch.Generator().manual_seed(0))
        assert float(res.improvements.min()) > 0, atk


class Smoothed(torch.nn.Module):
    """Gaussian input smoothing of ToyNR: the defense interface (prediction = median of noisy scores)."""

    lower_better = False
    score_range = (0.0, 1.0)

    def __init__(self) -> None:
        super().__init__()
        self.base = ToyNR()

    def noisy_scores(self, x, ref=None, *, n, generator=None):  # type: ignore[no-untyped-def]
        e = torch.randn((x.shape[0], n, *x.shape[1:]), generator=generator) * 0.1
        return self.base((x[:, None] + e).reshape(-1, *x.shape[1:])).reshape(x.shape[0], n)

    def predict(self, x, ref=None, *, n, generator=None):  # type: ignore[no-untyped-def]
        return self.noisy_scores(x, ref, n=n, generator=generator).median(dim=1).values


def test_black_box_through_a_randomized_defense_prediction() -> None:
    defense = Smoothed()
    x = random_images(3, 16, 16, seed=6)
    obj = eot_objective(defense, n=4, eval_n=51, eval_seed=7)
    res = SquareAttack(eps=8 / 255, queries=40).run(obj, x, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = defense.predict(x, n=51, generator=torch.Generator().manual_seed(7))
        after = defense.predict(res.adv, n=51, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(res.clean_scores, before) and torch.allclose(res.adv_scores, after)
    assert bool((after >= before).all()) and bool((after > before).sum() >= 2)


# ------------------------------------------------------------------ UAP
def test_uap_trained_on_some_images_raises_scores_on_unseen_ones(tmp_path: Path) -> None:
    model = ToyNR()
    obj = Objective.from_model(model)
    train, unseen = random_images(12, 16, 16, seed=7), random_images(6, 20, 28, seed=8)
    uap = UniversalPerturbation(eps=8 / 255, steps=30, batch_size=4).fit(
        obj, train, generator=torch.Generator().manual_seed(0))
    res = uap.run(obj, unseen)
    assert float(norms(res.adv - unseen, "linf").max()) <= 8 / 255 + 1e-6  # tiled to 20x28, still in the ball
    assert float(res.improvements.min()) > 0
    # Better than a random perturbation of the same size on the unseen images.
    g = torch.Generator().manual_seed(1)
    rand = (unseen + (torch.rand(unseen.shape, generator=g) * 2 - 1).sign() * 8 / 255).clamp(0, 1)
    with torch.no_grad():
        assert float(model(res.adv).mean()) > float(model(rand).mean())
    # Saved and loaded, it applies the same perturbation; L2 projects each tiled copy onto its ball.
    path = uap.save(tmp_path / "uap.safetensors")
    again = create_attack("uap", eps=8 / 255, perturbation=str(path)).run(obj, unseen)
    assert torch.equal(again.adv, res.adv)
    l2 = UniversalPerturbation(eps=0.3, norm="l2", steps=5).fit(obj, train)
    assert float(norms(l2.run(obj, unseen).adv - unseen, "l2").max()) <= 0.3 + 1e-5
    with pytest.raises(InputError, match="not trained"):
        UniversalPerturbation(eps=0.1).run(obj, unseen)
    with pytest.raises(InputError, match="not found"):
        UniversalPerturbation(eps=0.1, perturbation=tmp_path / "missing.safetensors")


def test_tile_to_is_periodic() -> None:
    d = torch.arange(6.0).reshape(1, 1, 2, 3)
    t = tile_to(d, (2, 1, 5, 7))
    assert t.shape == (2, 1, 5, 7)
    assert torch.equal(t[0, 0, :2, :3], d[0, 0]) and torch.equal(t[1, 0, 2:4, 3:6], d[0, 0])
    assert float(t[0, 0, 4, 6]) == float(d[0, 0, 0, 0])
