"""The gradient loop: best-iterate selection against closed forms, restarts, the random-start switch."""

from __future__ import annotations

import pytest
import torch

from robustbench_iqa.attacks import IFGSM, PGD, Flag, Objective, create_attack
from robustbench_iqa.errors import InputError
from tests.toy_models import ToyNR, random_images


def _peak(x0: torch.Tensor, offset: float) -> Objective:
    """score(x) = -sum (x - x0 - offset)^2: one maximum at x0 + offset."""
    def score(x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return -(x - x0 - offset).pow(2).reshape(x.shape[0], -1).sum(dim=1)

    return Objective(score)


def test_best_iterate_not_the_last_one() -> None:
    """Sign steps of 0.05 towards a peak at +0.03 overshoot: x0 -> x0+0.05 -> x0 -> x0+0.05 -> x0.

    The final iterate (x0) scores -0.0009 N, the first -0.0004 N: the first is returned.
    """
    x0 = torch.full((2, 3, 4, 4), 0.5)
    res = IFGSM(eps=0.1, steps=4, step_size=0.05).run(_peak(x0, 0.03), x0)
    assert torch.allclose(res.adv, x0 + 0.05)
    n = x0[0].numel()
    assert res.adv_scores.tolist() == pytest.approx([-0.0004 * n] * 2, rel=1e-4)
    assert res.improvements.tolist() == pytest.approx([0.0005 * n] * 2, rel=1e-3)
    assert all(r.iterations == 4 for r in res.records)


def test_never_worse_than_clean() -> None:
    """With the maximum at x0 itself every step loses: the clean image comes back, flagged no-progress."""
    x0 = random_images(3, 8, 8, seed=0) * 0.5 + 0.25
    for atk in (IFGSM(eps=0.05, steps=3), PGD(eps=0.05, steps=3, restarts=2)):
        res = atk.run(_peak(x0, 0.0), x0, generator=torch.Generator().manual_seed(0))
        assert torch.equal(res.adv, x0) and float(res.improvements.abs().max()) == 0.0
        assert all(Flag.NO_PROGRESS in c.flags for c in res.checks)


def test_pgd_random_start_switch() -> None:
    model = ToyNR()
    x = random_images(4, 16, 16, seed=1)
    obj = Objective.from_model(model)
    no_start = PGD(eps=0.03, steps=3, random_start=False).run(obj, x, generator=torch.Generator().manual_seed(0))
    same = IFGSM(eps=0.03, steps=3, step_size=2.5 * 0.03 / 3).run(obj, x)
    assert torch.allclose(no_start.adv, same.adv, atol=1e-6)  # PGD without random start: I-FGSM, PGD step
    started = PGD(eps=0.03, steps=3).run(obj, x, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(started.adv, no_start.adv)
    assert create_attack("pgd", eps=0.03, random_start=False).random_start is False
    assert create_attack("ifgsm", eps=0.03).random_start is False and create_attack("pgd", eps=0.03).random_start
    with pytest.raises(InputError):
        create_attack("pgd", eps=0.03, random_start="no")
    with pytest.raises(InputError):
        create_attack("pgd", eps=0.03, restarts=0)
    with pytest.raises(InputError, match="takes no argument 'random_start'"):
        create_attack("fgsm", eps=0.03, random_start=True)


def test_restarts_only_add_candidates() -> None:
    """Restart 1 of R uses the same draws as a single run: R restarts are never worse, and may be better."""
    model = ToyNR()
    x = random_images(6, 16, 16, seed=2)
    obj = Objective.from_model(model, target="decrease")
    one = PGD(eps=0.02, steps=2).run(obj, x, generator=torch.Generator().manual_seed(3))
    three = PGD(eps=0.02, steps=2, restarts=3).run(obj, x, generator=torch.Generator().manual_seed(3))
    assert bool((three.improvements >= one.improvements - 1e-7).all())
    assert all(r.iterations == 6 and r.evaluations == 4 for r in three.records)  # 3 x 2 steps; 1 + 3 evaluations
    ifgsm = IFGSM(eps=0.02, steps=2, restarts=2).run(obj, x, generator=torch.Generator().manual_seed(3))
    base = IFGSM(eps=0.02, steps=2).run(obj, x)
    assert bool((ifgsm.improvements >= base.improvements - 1e-7).all())  # the second restart starts at random


def test_eval_every_setting_is_checked() -> None:
    with pytest.raises(InputError):
        IFGSM(eps=0.1, eval_every=-1)


class _Counting:
    """A score function that counts its calls and the images it scored."""

    lower_better = False

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.calls, self.images = model, 0, 0

    def __call__(self, x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        self.calls += 1
        self.images += x.shape[0]
        return self.model(x, ref)


@pytest.mark.parametrize("random_start, want", [(False, 5 + 1), (True, 1 + 5 + 1)])
def test_ifgsm_costs_one_forward_per_step_plus_the_last_iterate(random_start: bool, want: int) -> None:
    # torchattacks' BIM costs T forward/backward passes; the loop adds only the forward pass that scores
    # the last iterate (and, from a random start, the clean image's).  From x itself the first step's
    # forward pass is the clean score: it must equal a separate evaluation exactly.
    torch.manual_seed(0)
    model = ToyNR().eval()
    x = random_images(3, seed=1)
    fn = _Counting(model)
    res = IFGSM(eps=4 / 255, steps=5, random_start=random_start)(Objective(fn), x,
                                                               generator=torch.Generator().manual_seed(0))
    assert fn.calls == want and fn.images == 3 * want
    with torch.no_grad():
        clean = model(x, None).reshape(-1)
    assert torch.equal(res.clean_scores, clean.cpu())
    assert all(r.evaluations == 2 for r in res.records)  # clean + last iterate, as before
    assert all(r.improvement >= 0 for r in res.records)
