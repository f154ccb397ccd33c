"""Every registered attack on the embedded NR and FR models (foolbox ``AttackTestTarget`` style).

Each row: the attack moves the score in the wanted direction on most images,
stays inside its budget and the [0, 1] box, leaves the FR reference untouched,
returns records that agree with an independent evaluation, and (all but the
universal perturbation, which applies one delta without search) never returns an
image worse than clean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

from robustbench_iqa import create_dataset, create_model
from robustbench_iqa.attacks import Objective, attack_info, create_attack, list_attacks
from robustbench_iqa.attacks.perceptual import texture_mask
from robustbench_iqa.attacks.similarity import ssim
from robustbench_iqa.attacks.sparse import changed_pixels
from robustbench_iqa.attacks.threat import norms

TOL = 1e-5
EPS = {"linf": 8 / 255, "l2": 0.5}
CROP = (slice(None), slice(None), slice(32, 64), slice(40, 88))  # 32x48 crops


@dataclass(frozen=True)
class Case:
    """One table row: an attack with settings, the norms and targets it is run with, and its budget check."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    norms: tuple[str, ...] = ("linf", "l2")
    targets: tuple[str, ...] = ("increase",)
    min_moved: int = 2  # of 3 images, strictly improved
    budget: str = "ball"
    fr_targets: tuple[str, ...] | None = None  # targets on the FR model, if not ``targets``

    @property
    def id(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.settings.items() if k in ("hold", "distance"))
        return self.name + (f"[{extra}]" if extra else "")


CASES = [
    # One full step of 8/255 overshoots the FR distance's minimum on two of the images (clean is returned).
    Case("fgsm", {}, targets=("increase", "decrease"), min_moved=1),
    Case("ifgsm", {"steps": 4}, targets=("increase", "decrease")),
    Case("mifgsm", {"steps": 4}),
    Case("pgd", {"steps": 4, "restarts": 2}),
    Case("texture", {"steps": 4}, budget="texture"),
    Case("korhonen", {"steps": 4}),
    Case("madc", {"steps": 4, "hold": "ssim"}),
    Case("madc", {"steps": 4, "hold": "mse"}, norms=("l2",)),
    Case("perceptual-bounded", {"steps": 4, "max_distance": 0.02}, budget="ssim"),
    Case("perceptual-bounded", {"steps": 3, "distance": "default-fr", "max_distance": 0.01}, norms=("linf",),
         budget="fr-distance"),
    # One delta for all images cannot move each distorted image towards its own reference: FR decrease only.
    Case("uap", {"steps": 10, "batch_size": 4}, targets=("increase", "decrease"), fr_targets=("decrease",)),
    # Raising FR quality means moving towards each image's reference; random squares rarely do in 60 queries.
    Case("square", {"queries": 60}, targets=("increase", "decrease"), min_moved=1),
    Case("random-search", {"queries": 40}),
    Case("sparse", {"pixels": 4, "queries": 40}, norms=("linf",), targets=("decrease",), budget="sparse"),
    Case("sparse", {"pixels": 4, "queries": 20}, norms=("linf",), min_moved=0, budget="sparse"),
]


# A registered attack without a row of its own is run with its defaults on every norm it declares.
CASES += [Case(name, norms=tuple(attack_info(name)["threat"])) for name in list_attacks()
          if name not in {c.name for c in CASES}]


def test_every_registered_attack_is_in_the_table() -> None:
    assert sorted({c.name for c in CASES}) == sorted(list_attacks())
    assert {"fgsm", "pgd", "square", "sparse", "uap"} <= {c.name for c in CASES}


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    train, test = create_dataset("default").split(seed=0)
    # Distorted test images (the first one is within 1/255 of its reference: nothing to gain there).
    xs, refs = zip(*(test.load(i) for i in (1, 2, 3)), strict=True)
    txs, trefs = zip(*(train.load(i) for i in range(8)), strict=True)
    return {"x": torch.stack(xs)[CROP], "ref": torch.stack(refs)[CROP],
            "train_x": torch.stack(txs)[CROP], "train_ref": torch.stack(trefs)[CROP]}


@pytest.fixture(scope="module")
def models() -> dict[str, Any]:
    return {"nr": create_model("default-nr"), "fr": create_model("default-fr")}


def _params() -> list[Any]:
    out = []
    for case in CASES:
        for norm in case.norms:
            for kind in ("nr", "fr"):
                targets = case.fr_targets if kind == "fr" and case.fr_targets is not None else case.targets
                for target in targets:
                    out.append(pytest.param(case, norm, target, kind, id=f"{case.id}-{norm}-{target}-{kind}"))
    return out


def _within_budget(case: Case, atk: Any, adv: torch.Tensor, x: torch.Tensor, norm: str, eps: float) -> None:
    delta = adv - x
    if case.budget == "sparse":
        assert int(changed_pixels(adv, x).max()) <= case.settings["pixels"]
        assert float(norms(delta, "linf").max()) <= atk.eps + TOL
        return
    assert float(norms(delta, norm).max()) <= eps + TOL
    if case.budget == "texture" and norm == "linf":
        assert bool((delta.abs() <= eps * texture_mask(x) + TOL).all())
    if case.budget == "ssim":
        assert float(ssim(adv, x).min()) >= 1 - case.settings["max_distance"] - 1e-6
    if case.budget == "fr-distance":
        assert float(atk.distance(adv, x).max()) <= case.settings["max_distance"] + 1e-6


@pytest.mark.parametrize(("case", "norm", "target", "kind"), _params())
def test_attack_table(case: Case, norm: str, target: str, kind: str, data: dict[str, torch.Tensor],
                      models: dict[str, Any]) -> None:
    model = models[kind]
    x = data["x"]
    ref = data["ref"] if kind == "fr" else None
    ref_before = None if ref is None else ref.clone()
    eps = EPS[norm]
    settings = dict(case.settings)
    if case.name != "sparse":
        settings["eps"] = eps
    atk = create_attack(case.name, norm=norm, **settings)
    obj = Objective.from_model(model, target=target)
    if case.name == "uap":
        atk.fit(obj, data["train_x"], data["train_ref"] if kind == "fr" else None,
                generator=torch.Generator().manual_seed(0))
    res = atk.run(obj, x, ref, generator=torch.Generator().manual_seed(0))
    adv = res.adv
    # Box, budget, reference untouched.
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    _within_budget(case, atk, adv, x, norm, eps)
    if ref is not None:
        assert torch.equal(ref, ref_before)
    # Records agree with an independent evaluation.
    with torch.no_grad():
        clean, after = model(x, ref), model(adv, ref)
    assert torch.allclose(res.clean_scores, clean, atol=1e-5)
    assert torch.allclose(res.adv_scores, after, atol=1e-5)
    gain = obj.gain(after) - obj.gain(clean)
    assert torch.allclose(res.improvements, gain, atol=1e-5)
    # The wanted direction, in quality terms.
    quality_up = (after - clean) * (-1.0 if model.lower_better else 1.0)
    moved = quality_up > 0 if target == "increase" else quality_up < 0
    if case.name == "uap":  # one perturbation for all, no per-image selection: on average
        assert float(gain.mean()) > 0, gain
        return
    assert bool((gain >= 0).all()), gain  # the best iterate is never worse than clean
    assert int(moved.sum()) >= case.min_moved, (gain, case.id, norm, target, kind)
    assert all((c.improvement > 0) == bool(m) for c, m in zip(res.checks, gain > 0))


