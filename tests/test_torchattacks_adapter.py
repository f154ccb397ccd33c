"""torchattacks on IQA models through :class:`attacks.IQAClassifier`."""

from __future__ import annotations

import pytest
import torch
import torchattacks

from robustbench_iqa.attacks import FGSM, IFGSM, IQAClassifier, Objective
from robustbench_iqa.attacks.threat import norms
from robustbench_iqa.errors import InputError
from tests.toy_models import ToyFR, ToyNR, random_images


def _case(kind: str):
    if kind == "nr":
        return ToyNR(), random_images(4, 32, 32, seed=1), None
    return ToyFR(), random_images(4, 32, 32, seed=2), random_images(4, 32, 32, seed=3)


def test_logits_and_loss_grow_with_quality() -> None:
    """CE(label 0) = softplus(k * sign * s - m): check against the closed form for both orientations."""
    for (model, x, ref), margin in ((_case("nr"), 0.0), (_case("fr"), 2.5)):
        clf = IQAClassifier(model, ref=ref, scale=3.0, margin=margin)
        with torch.no_grad():
            s = model(x, ref)
            logits = clf(x)
            ce = torch.nn.functional.cross_entropy(logits, clf.labels(x), reduction="none")
        sign = -1.0 if model.lower_better else 1.0
        assert logits.shape == (4, 2)
        assert torch.allclose(ce, torch.nn.functional.softplus(3.0 * sign * s - margin), atol=1e-6)


@pytest.mark.parametrize("kind", ["nr", "fr"])
@pytest.mark.parametrize("target", ["increase", "decrease"])
def test_bim_equals_our_ifgsm(kind: str, target: str) -> None:
    model, x, ref = _case(kind)
    eps, alpha, steps = 8 / 255, 2 / 255, 6
    clf = IQAClassifier(model, ref=ref, target=target)
    theirs = torchattacks.BIM(clf, eps=eps, alpha=alpha, steps=steps)(x, clf.labels(x))
    ours = IFGSM(eps=eps, steps=steps, step_size=alpha, norm="linf").run(
        Objective.from_model(model, target=target), x, ref).adv
    assert torch.allclose(theirs, ours, atol=1e-7)
    assert float((ours - x).abs().max()) > eps / 2  # the attack actually moved


def test_fgsm_equals_our_fgsm() -> None:
    model, x, _ = _case("nr")
    clf = IQAClassifier(model)
    theirs = torchattacks.FGSM(clf, eps=4 / 255)(x, clf.labels(x))
    ours = FGSM(eps=4 / 255).run(Objective.from_model(model), x).adv
    assert torch.allclose(theirs, ours, atol=1e-7)


@pytest.mark.parametrize("name", ["PGD", "PGDL2", "APGD", "Square"])
def test_other_torchattacks_raise_the_score(name: str) -> None:
    model, x, _ = _case("nr")
    # APGD and Square keep an image only once its label flips, i.e. once k * s exceeds the
    # margin: a margin of k * 0.36 asks them to lift the score above 0.36 (clean: 0.335-0.347).
    threshold = 0.342 if name == "Square" else 0.36  # random search gains less
    clf = IQAClassifier(model, scale=100.0, margin=100.0 * threshold)
    if name == "PGD":
        atk = torchattacks.PGD(clf, eps=8 / 255, alpha=2 / 255, steps=5)
        bound, norm = 8 / 255, "linf"
    elif name == "PGDL2":
        atk = torchattacks.PGDL2(clf, eps=0.5, alpha=0.2, steps=5)
        bound, norm = 0.5, "l2"
    elif name == "APGD":
        atk = torchattacks.APGD(clf, eps=8 / 255, steps=5, n_restarts=1, loss="ce")
        bound, norm = 8 / 255, "linf"
    else:
        atk = torchattacks.Square(clf, eps=8 / 255, n_queries=200, n_restarts=1)
        bound, norm = 8 / 255, "linf"
    torch.manual_seed(0)  # torchattacks draws from the global RNG; only the test seeds it
    adv = atk(x, clf.labels(x)).detach()
    assert float(norms(adv - x, norm).max()) <= bound + 1e-5
    with torch.no_grad():
        clean, after = model(x), model(adv)
    if name in ("APGD", "Square"):
        assert int((after > threshold).sum()) >= 3, after
    else:
        assert int((after > clean).sum()) >= 3, after


def test_fr_reference_binding() -> None:
    model, x, ref = _case("fr")
    single = IQAClassifier(model, ref=ref[:1])
    with torch.no_grad():
        assert torch.allclose(single(x)[:, 1], -model(x, ref[:1].expand(4, -1, -1, -1)))
    per_image = IQAClassifier(model, ref=ref)
    with pytest.raises(InputError):
        per_image(x[:2])
    with pytest.raises(InputError):
        IQAClassifier(model, target="toward")
