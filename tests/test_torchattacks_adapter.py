"""torchattacks on IQA models through :class:`attacks.IQAClassifier` and :func:`run_torchattack`.

A parametrized table (foolbox ``AttackTestTarget`` style) over every supported torchattacks
attack, on the tiny NR and FR models, in both directions: the score must move the wanted way
and the perturbation stay inside the budget.  Plus closed forms of the logits, equality with
the suite's own I-FGSM, and immunity to the score's scale and to the margin.
"""

from __future__ import annotations

import pytest
import torch
import torchattacks

from robustbench_iqa.attacks import FGSM, IFGSM, IQAClassifier, Objective
from robustbench_iqa.attacks.threat import norms
from robustbench_iqa.attacks.torchattacks_adapter import REFUSED, SUPPORTED, run_torchattack
from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import IQAModel
from tests.toy_models import ToyFR, ToyNR, random_images

E = 8 / 255
# name -> (constructor keywords, norm, budget)
TABLE: dict[str, tuple[dict[str, object], str, float]] = {
    "FGSM": ({"eps": E}, "linf", E),
    "BIM": ({"eps": E, "alpha": 2 / 255, "steps": 5}, "linf", E),
    "RFGSM": ({"eps": E, "alpha": 2 / 255, "steps": 5}, "linf", E),
    "PGD": ({"eps": E, "alpha": 2 / 255, "steps": 5}, "linf", E),
    "EOTPGD": ({"eps": E, "alpha": 2 / 255, "steps": 5, "eot_iter": 2}, "linf", E),
    "FFGSM": ({"eps": E, "alpha": 10 / 255}, "linf", E),
    "MIFGSM": ({"eps": E, "alpha": 2 / 255, "steps": 5}, "linf", E),
    "UPGD": ({"eps": E, "alpha": 2 / 255, "steps": 5}, "linf", E),
    "DIFGSM": ({"eps": E, "alpha": 2 / 255, "steps": 5}, "linf", E),
    "TIFGSM": ({"eps": E, "alpha": 2 / 255, "steps": 5}, "linf", E),
    "NIFGSM": ({"eps": E, "alpha": 2 / 255, "steps": 5}, "linf", E),
    "SINIFGSM": ({"eps": E, "alpha": 2 / 255, "steps": 5, "m": 2}, "linf", E),
    "VMIFGSM": ({"eps": E, "alpha": 2 / 255, "steps": 5, "N": 2}, "linf", E),
    "VNIFGSM": ({"eps": E, "alpha": 2 / 255, "steps": 5, "N": 2}, "linf", E),
    "PGDL2": ({"eps": 0.5, "alpha": 0.2, "steps": 5}, "l2", 0.5),
    "PGDRS": ({"eps": E, "alpha": 2 / 255, "steps": 5, "noise_sd": 0.05, "noise_batch_size": 2}, "linf", E),
    "PGDRSL2": ({"eps": 0.5, "alpha": 0.2, "steps": 5, "noise_sd": 0.05, "noise_batch_size": 2}, "l2", 0.5),
    "SPSA": ({"eps": E, "nb_iter": 3, "nb_sample": 32, "max_batch_size": 32}, "linf", E),
    "PIFGSM": ({"max_epsilon": E, "num_iter_set": 5}, "linf", E),
    "PIFGSMPP": ({"max_epsilon": E, "num_iter_set": 5}, "linf", E),
    "APGD": ({"eps": E, "steps": 5}, "linf", E),
    "Square": ({"eps": E, "n_queries": 300}, "linf", E),
}


def _case(kind: str) -> tuple[IQAModel, torch.Tensor, torch.Tensor | None]:
    if kind == "nr":
        return ToyNR(), random_images(4, 32, 32, seed=1), None
    return ToyFR(), random_images(4, 32, 32, seed=2), random_images(4, 32, 32, seed=3)


def _gain(model: IQAModel, x: torch.Tensor, adv: torch.Tensor, ref: torch.Tensor | None, target: str) -> torch.Tensor:
    """Change of quality in the wanted direction (positive = the attack worked)."""
    with torch.no_grad():
        delta = model(adv, ref) - model(x, ref)
    return delta * (1.0 if (target == "increase") != model.lower_better else -1.0)


def test_table_covers_every_torchattacks_attack() -> None:
    names = {n for n in dir(torchattacks) if isinstance(getattr(torchattacks, n), type)
             and issubclass(getattr(torchattacks, n), torchattacks.attack.Attack) and n != "Attack"}
    assert names == set(SUPPORTED) | set(REFUSED)
    assert set(TABLE) == set(SUPPORTED) and not set(SUPPORTED) & set(REFUSED)


@pytest.mark.parametrize("target", ["increase", "decrease"])
@pytest.mark.parametrize("kind", ["nr", "fr"])
@pytest.mark.parametrize("name", sorted(TABLE))
def test_every_supported_attack_moves_the_score_the_wanted_way(name: str, kind: str, target: str) -> None:
    model, x, ref = _case(kind)
    kwargs, norm, budget = TABLE[name]
    clf = IQAClassifier(model, ref=ref, target=target)
    attack = getattr(torchattacks, name)(clf, **kwargs)
    state = torch.get_rng_state()
    adv = run_torchattack(attack, x, seed=0)
    assert torch.equal(torch.get_rng_state(), state)  # torchattacks' reseeding does not leak
    assert float(norms(adv - x, norm).max()) <= budget + 1e-5 and 0 <= float(adv.min()) <= float(adv.max()) <= 1
    gain = _gain(model, x, adv, ref, target)
    assert bool((gain >= 0).all()), gain  # never worse than the clean image
    assert int((gain > 0).sum()) >= 3, gain


def test_apgd_keeps_its_best_iterate_instead_of_the_clean_images() -> None:
    """torchattacks' APGD.forward returns the clean image when no label flips; the adapter
    takes attack_single_run's best iterate, which improves every image."""
    model, x, _ = _case("nr")
    clf = IQAClassifier(model)
    attack = torchattacks.APGD(clf, eps=E, steps=10)
    assert torch.equal(attack(x, clf.labels(x)), x)  # the flip-based path: nothing kept
    adv = run_torchattack(attack, x)
    assert bool((_gain(model, x, adv, None, "increase") > 0).all())
    with pytest.raises(InputError, match="loss='ce'"):
        run_torchattack(torchattacks.APGD(clf, eps=E, steps=2, loss="dlr"), x)


class Scaled(IQAModel):
    """``a * s(x) + b`` of a toy model, with its range scaled the same way."""

    def __init__(self, base: IQAModel, a: float, b: float) -> None:
        super().__init__()
        self.base, self.a, self.b = base, a, b
        self.mode, self.lower_better = base.mode, base.lower_better
        lo, hi = base.score_range
        self.score_range = (a * lo + b, a * hi + b)

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return self.a * self.base(x, ref) + self.b


@pytest.mark.parametrize("name", ["BIM", "PGDL2", "APGD"])
def test_immune_to_the_score_scale(name: str) -> None:
    """The same attack on s and on 1000 s + 5000 (range scaled alike) takes the same steps
    (APGD: the same gains to 2%; its loss comparisons see the float rounding of 1000 s + 5000)."""
    model, x, _ = _case("nr")
    kwargs = TABLE[name][0]
    advs = []
    for m in (model, Scaled(model, 1000.0, 5000.0)):
        clf = IQAClassifier(m)
        advs.append(run_torchattack(getattr(torchattacks, name)(clf, **kwargs), x, seed=3))
    gains = [_gain(model, x, adv, None, "increase") for adv in advs]
    assert bool((gains[0] > 0).all())
    if name == "APGD":
        torch.testing.assert_close(gains[1], gains[0], rtol=0.02, atol=0)
    else:
        torch.testing.assert_close(advs[0], advs[1], atol=2e-6, rtol=0)


def test_a_large_margin_or_offset_score_does_not_silence_the_attack() -> None:
    """exp(u - m) underflows for a large margin or a score far from its range; the value of u
    is clamped but its gradient passes, so BIM still moves (it moved 0 before)."""
    model, x, _ = _case("nr")
    far = Scaled(model, 1.0, 300.0)  # scores near 300, declared range [0, 1]
    far.score_range = model.score_range
    for clf in (IQAClassifier(model, margin=30.0), IQAClassifier(far, target="decrease")):
        adv = torchattacks.BIM(clf, eps=E, alpha=2 / 255, steps=5)(x, clf.labels(x))
        assert float((adv - x).abs().max()) > E / 2
    clf = IQAClassifier(model, margin=30.0)
    adv = run_torchattack(torchattacks.PGDL2(clf, eps=0.5, alpha=0.2, steps=5), x)
    assert float(norms(adv - x, "l2").min()) > 0.4 and bool((_gain(model, x, adv, None, "increase") > 0).all())


def test_logits_are_the_normalised_score() -> None:
    """z = [m, clamp_st(sign * (s - a) / w)], CE(label 0) = softplus(u - m): closed form."""
    for (model, x, ref), margin in ((_case("nr"), 0.0), (_case("fr"), 0.25)):
        clf = IQAClassifier(model, ref=ref, margin=margin, score_range=(0.0, 4.0))
        with torch.no_grad():
            s = model(x, ref)
            logits = clf(x)
            ce = torch.nn.functional.cross_entropy(logits, clf.labels(x), reduction="none")
        sign = -1.0 if model.lower_better else 1.0
        u = sign * (s - 2.0) / 4.0
        torch.testing.assert_close(logits, torch.stack([torch.full_like(u, margin), u], dim=1))
        torch.testing.assert_close(ce, torch.nn.functional.softplus(u - margin), atol=1e-6, rtol=0)
    xg = x.clone().requires_grad_(True)
    clf = IQAClassifier(Scaled(ToyNR(), 1.0, 100.0), score_range=(0.0, 1.0))  # u = ~100 -> clamped at 10
    u = clf.normalised(xg)
    assert bool((u == 10.0).all())
    (g,) = torch.autograd.grad(u.sum(), xg)
    assert float(g.abs().sum()) > 0  # the clamp passes the gradient through


@pytest.mark.parametrize("kind", ["nr", "fr"])
@pytest.mark.parametrize("target", ["increase", "decrease"])
def test_bim_equals_our_ifgsm(kind: str, target: str) -> None:
    model, x, ref = _case(kind)
    eps, alpha, steps = 8 / 255, 2 / 255, 6
    clf = IQAClassifier(model, ref=ref, target=target)
    theirs = run_torchattack(torchattacks.BIM(clf, eps=eps, alpha=alpha, steps=steps), x)
    ours = IFGSM(eps=eps, steps=steps, step_size=alpha, norm="linf").run(
        Objective.from_model(model, target=target), x, ref).adv
    assert torch.allclose(theirs, ours, atol=1e-7)
    assert float((ours - x).abs().max()) > eps / 2  # the attack actually moved


def test_fgsm_equals_our_fgsm() -> None:
    model, x, _ = _case("nr")
    clf = IQAClassifier(model)
    theirs = run_torchattack(torchattacks.FGSM(clf, eps=4 / 255), x)
    ours = FGSM(eps=4 / 255).run(Objective.from_model(model), x).adv
    assert torch.allclose(theirs, ours, atol=1e-7)


def test_refused_attacks_say_why() -> None:
    model, x, _ = _case("nr")
    clf = IQAClassifier(model)
    with pytest.raises(InputError, match="TPGD does not apply to an IQA score: its KL objective"):
        run_torchattack(torchattacks.TPGD(clf), x)
    with pytest.raises(InputError, match="CW does not apply.*label flipped"):
        run_torchattack(torchattacks.CW(clf), x)
    with pytest.raises(InputError, match="built on an IQAClassifier"):
        run_torchattack(torchattacks.FGSM(torch.nn.Linear(2, 2)), x)
    with pytest.raises(InputError, match="normalises the score by its range"):
        IQAClassifier(lambda x, ref=None: x.mean((1, 2, 3)))  # a bare function has no range
    with pytest.raises(InputError, match="only 'increase' and 'decrease'"):
        IQAClassifier(model, target="toward")


def test_fr_reference_binding() -> None:
    model, x, ref = _case("fr")
    single = IQAClassifier(model, ref=ref[:1], score_range=(0.0, 1.0))
    with torch.no_grad():
        torch.testing.assert_close(single(x)[:, 1], -(model(x, ref[:1].expand(4, -1, -1, -1)) - 0.5))
    per_image = IQAClassifier(model, ref=ref)
    with pytest.raises(InputError, match="does not match the queried batch"):
        per_image(x[:2])


class _WithBatchNorm(IQAModel):
    """An NR model with a batch-norm layer: in training mode its running statistics change."""

    name, full_reference, lower_better, score_range = "toy-bn", False, False, (0.0, 1.0)

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Tanh())

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return feats.mean(dim=1)


@pytest.mark.parametrize("training", [False, True])
def test_a_torchattacks_run_leaves_the_model_mode_as_it_was(training: bool) -> None:
    # torchattacks calls train() on its model after an attack when it found the model training; an
    # IQAClassifier built as a fresh nn.Module was "training", so an eval-mode IQA model came back in
    # training mode, its batch-norm running statistics then updated by every later forward pass.
    torch.manual_seed(0)
    model = _WithBatchNorm().train(training)
    stats = model.body[1].running_mean.clone()
    clf = IQAClassifier(model)
    x = random_images(2, seed=3)
    torchattacks.BIM(clf, eps=4 / 255, alpha=1 / 255, steps=2)(x, clf.labels(x))
    assert model.training is training
    assert all(m.training is training for m in model.modules())
    if not training:
        assert torch.equal(model.body[1].running_mean, stats)
