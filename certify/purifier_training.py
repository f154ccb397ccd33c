"""Training the learned purifier (:mod:`robustbench_iqa.certify.purifier`) and its held-out report.

**Data.**  The dataset is split by ``seed`` (group-aware, ``train_fraction`` for training).
From every training image one random ``patch_size`` crop c_i is taken (the same crop of its
reference), and an adversarial version a_i is made by I-FGSM (Kurakin et al. 2017; Linf,
``steps`` steps, no random start) against one of the ``models``, chosen at random per
image with a random direction (raise or lower the apparent quality) and a budget drawn from
``eps_choices``; the attack is white-box against the undefended model.  All draws come from
one generator seeded with ``seed``.

**Loss**: the pixel-guided denoiser loss of Liao et al. 2018, optionally plus an identity
term on clean crops (``clean_weight`` w_clean, default 0: the shipped purifier was trained
without it; with w_clean = 1 it stayed closer to the identity and purified less):

    L = mean_i || P(a_i) - c_i ||^2 + w_clean mean_i || P(c_i) - c_i ||^2     (mean over pixels).

Adam with a cosine learning-rate schedule; the network is a small DnCNN whose last layer
starts at zero, so training starts from the identity.

**Held-out report** (:func:`evaluate_purifier`, test split, whole images), per model:
PSNR of P(x) vs x on clean images; SRCC/PLCC of the defended and undefended scores with
the dataset's labels; on the first ``eval_limit`` test images, I-FGSM at ``eval_eps``
(raise the quality) against the undefended model: PSNR of the adversarial and of the
purified adversarial image vs x, and the mean gain (in quality direction) of the score
undefended, after purification (the same adversarial images, *transferred*), and under
the *adaptive* attack that differentiates through P.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from robustbench_iqa.attacks.eot import eot_objective
from robustbench_iqa.attacks.gradient import IFGSM
from robustbench_iqa.attacks.objective import Objective
from robustbench_iqa.certify.denoiser import DnCNN
from robustbench_iqa.certify.denoiser_training import _corr, _load_all, _psnr, _random_crop
from robustbench_iqa.certify.purifier import PurifierIQA
from robustbench_iqa.data.base import IQADataset
from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import IQAModel


@dataclass
class PurifierReport:
    """Held-out numbers of a trained purifier (see the module doc), per model name."""

    per_model: dict[str, dict[str, float]]
    n_train: int
    n_test: int
    history: list[dict[str, float]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ifgsm(model: IQAModel, x: torch.Tensor, ref: torch.Tensor | None, *, eps: torch.Tensor, steps: int,
           increase: bool) -> torch.Tensor:
    """I-FGSM (Linf, step eps/steps, per-image eps) raising or lowering the quality of ``model``."""
    obj = Objective.from_model(model, target="increase" if increase else "decrease")
    return IFGSM(eps=float(eps.max()), steps=steps).run(obj, x, ref, eps=eps).adv


def adversarial_pairs(
    models: Sequence[IQAModel], x: torch.Tensor, ref: torch.Tensor | None, *, eps_choices: Sequence[float],
    steps: int, generator: torch.Generator, batch_size: int = 32, progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Adversarial versions of ``x`` (see the module doc) and the index of the model each attacked."""
    n = x.shape[0]
    which = torch.randint(0, len(models), (n,), generator=generator)
    increase = torch.randint(0, 2, (n,), generator=generator).bool()
    eps = torch.tensor(list(eps_choices), dtype=x.dtype)[torch.randint(0, len(eps_choices), (n,), generator=generator)]
    adv = x.clone()
    groups = [(m, up) for m in range(len(models)) for up in (True, False)]
    with tqdm(total=n, desc="I-FGSM examples", leave=False, disable=not progress) as bar:
        for m, up in groups:
            idx = torch.nonzero((which == m) & (increase == up)).flatten()
            model = models[m]
            for s in range(0, len(idx), batch_size):
                i = idx[s : s + batch_size]
                r = ref[i] if model.full_reference and ref is not None else None
                adv[i] = _ifgsm(model, x[i], r, eps=eps[i], steps=steps, increase=up)
                bar.update(len(i))
    return adv, which


def check_training(*, epochs: int, batch_size: int, patch_size: int, steps: int, eps_choices: Sequence[float],
                   lr: float, clean_weight: float) -> None:
    for nm, val in (("epochs", epochs), ("batch_size", batch_size), ("patch_size", patch_size), ("steps", steps)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise InputError(f"{nm} must be a positive integer, got {val!r}")
    if not eps_choices or not all(isinstance(e, (int, float)) and 0 < e < 1 for e in eps_choices):
        raise InputError(f"eps_choices must be budgets in (0, 1), got {eps_choices!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise InputError(f"lr must be a finite number > 0, got {lr!r}")
    if not (isinstance(clean_weight, (int, float)) and math.isfinite(clean_weight) and clean_weight >= 0):
        raise InputError(f"clean_weight must be a finite number >= 0, got {clean_weight!r}")


def train_purifier(
    models: Sequence[IQAModel], dataset: IQADataset, *, epochs: int = 8, lr: float = 1e-3, batch_size: int = 16,
    patch_size: int = 48, eps_choices: Sequence[float] = (2 / 255, 4 / 255, 8 / 255), steps: int = 10,
    depth: int = 5, width: int = 32, clean_weight: float = 0.0, seed: int = 0, train_fraction: float = 0.8,
    eval_eps: float = 4 / 255, eval_limit: int = 64, progress: bool = True,
) -> tuple[DnCNN, PurifierReport]:
    """Train a DnCNN purifier on I-FGSM examples of ``models`` (see the module doc); CPU-sized defaults."""
    check_training(epochs=epochs, batch_size=batch_size, patch_size=patch_size, steps=steps,
                   eps_choices=eps_choices, lr=lr, clean_weight=clean_weight)
    if not models:
        raise InputError("train_purifier needs at least one model")
    full_reference = any(m.full_reference for m in models)
    gen = torch.Generator().manual_seed(seed)
    train, test = dataset.split(seed=seed, train_fraction=train_fraction)
    x_tr, ref_tr, _ = _load_all(train, full_reference=full_reference)
    both = x_tr if ref_tr is None else torch.cat([x_tr, ref_tr], dim=1)  # one crop of image and reference
    both = _random_crop(both, patch_size, gen)
    clean, ref_c = both[:, :3].contiguous(), (None if ref_tr is None else both[:, 3:].contiguous())
    adv, _ = adversarial_pairs(models, clean, ref_c, eps_choices=eps_choices, steps=steps, generator=gen,
                               progress=progress)

    net = DnCNN(depth=depth, width=width).reset_parameters(gen)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n_steps = epochs * math.ceil(len(clean) / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n_steps)
    history: list[dict[str, float]] = []
    net.train()
    for epoch in tqdm(range(epochs), desc="purifier epochs", disable=not progress):
        perm = torch.randperm(len(clean), generator=gen)
        tot_adv = tot_clean = 0.0
        for s in range(0, len(clean), batch_size):
            i = perm[s : s + batch_size]
            inputs = torch.cat([adv[i], clean[i]]) if clean_weight > 0 else adv[i]
            out = net(inputs)
            l_adv = torch.mean((out[: len(i)] - clean[i]) ** 2)
            l_clean = torch.mean((out[len(i):] - clean[i]) ** 2) if clean_weight > 0 else l_adv.new_zeros(())
            loss = l_adv + clean_weight * l_clean
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot_adv += l_adv.item() * len(i)
            tot_clean += l_clean.item() * len(i)
        history.append({"epoch": epoch + 1, "adv_mse": tot_adv / len(clean), "clean_mse": tot_clean / len(clean)})
    net.eval()
    per_model = {m.name: evaluate_purifier(m, net, test, eps=eval_eps, steps=steps, limit=eval_limit)
                 for m in models}
    config = {"epochs": epochs, "lr": lr, "batch_size": batch_size, "patch_size": patch_size,
              "eps_choices": [float(e) for e in eps_choices], "steps": steps, "depth": depth, "width": width,
              "clean_weight": clean_weight,
              "seed": seed, "train_fraction": train_fraction, "eval_eps": eval_eps, "eval_limit": eval_limit,
              "models": [m.name for m in models]}
    return net, PurifierReport(per_model, len(clean), len(test), history, config)


def evaluate_purifier(model: IQAModel, purifier: DnCNN, test: IQADataset, *, eps: float, steps: int = 10,
                      limit: int = 64, batch_size: int = 32) -> dict[str, float]:
    """Held-out numbers of ``purifier`` in front of ``model`` (see the module doc)."""
    x, ref, y = _load_all(test, full_reference=model.full_reference)
    defense = PurifierIQA(model, purifier=purifier, batch_size=batch_size)
    sign = -1.0 if model.lower_better else 1.0
    plain, defended, psnr_clean = [], [], []
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            xb, rb = x[s : s + batch_size], None if ref is None else ref[s : s + batch_size]
            plain.append(model(xb, rb))
            defended.append(defense.predict(xb, rb))
            psnr_clean.append(_psnr(defense.transform(xb), xb))
    yn = y.numpy().astype(np.float64)
    srcc, plcc = _corr(torch.cat(defended).double().numpy(), yn)
    srcc0, plcc0 = _corr(torch.cat(plain).double().numpy(), yn)
    xa, ra = x[:limit], None if ref is None else ref[:limit]
    attack = IFGSM(eps=eps, steps=steps)
    gain0, gain_t, gain_a, psnr_adv, psnr_pur = [], [], [], [], []
    for s in range(0, len(xa), batch_size):
        xb, rb = xa[s : s + batch_size], None if ra is None else ra[s : s + batch_size]
        adv = attack.run(Objective.from_model(model), xb, rb)
        gain0.append(adv.improvements)
        with torch.no_grad():
            pur = defense.transform(adv.adv)
            psnr_adv.append(_psnr(adv.adv, xb))
            psnr_pur.append(_psnr(pur, xb))
            gain_t.append(sign * (defense.predict(adv.adv, rb) - defense.predict(xb, rb)))
        gain_a.append(attack.run(eot_objective(defense, n=1, eval_n=1), xb, rb).improvements)

    def mean(v: list[torch.Tensor]) -> float:
        return float(torch.cat(v).double().mean())

    return {"psnr_clean": mean(psnr_clean), "srcc": srcc, "plcc": plcc, "srcc_undefended": srcc0,
            "plcc_undefended": plcc0, "eval_eps": float(eps), "n_attacked": len(xa),
            "psnr_adversarial": mean(psnr_adv), "psnr_purified": mean(psnr_pur),
            "gain_undefended": mean(gain0), "gain_transfer": mean(gain_t), "gain_adaptive": mean(gain_a)}
