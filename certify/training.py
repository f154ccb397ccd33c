"""Training FS-IQA's FTN and scorer on a frozen backbone.

FS-IQA (Shumitskaya et al.), Sec. "Training and application": the backbone b
is frozen, FTN and the scorer are trained with the MSE between the predicted
score and the subjective score.  Because b is frozen, its features are
computed once per image and cached; each epoch only passes the cached
features through the small heads.  The scorer is trained on noisy features
f_norm + e, e ~ N(0, sigma_f^2 I) (one draw per sample and step), the
Gaussian data augmentation that randomized smoothing relies on (Cohen et al.
2019, Sec. 3.1), so that the scorer is accurate under the noise it is
smoothed with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.stats import pearsonr, spearmanr
from torch import nn
from tqdm.auto import tqdm

from robustbench_iqa.certify.fs_iqa import FeatureSmoothedIQA
from robustbench_iqa.certify.heads import FTN, Scorer, check_feature_width
from robustbench_iqa.data.base import IQADataset
from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import Backbone, IQAModel
from robustbench_iqa.validation import check_sigma


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    dataset: IQADataset,
    *,
    full_reference: bool,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backbone features (N, D) and subjective scores (N,) of every sample, computed once."""
    if len(dataset) == 0:
        raise InputError(f"dataset {dataset.name!r} is empty")
    if full_reference and not dataset.has_references:
        raise InputError(f"dataset {dataset.name!r} has no reference images, but the model is full-reference")
    feats: list[torch.Tensor] = []
    scores: list[float] = []
    idx = list(range(len(dataset)))
    bar = tqdm(total=len(idx), desc="backbone features", unit="img", disable=not progress, leave=False)
    for start in range(0, len(idx), batch_size):
        chunk = idx[start : start + batch_size]
        loaded = [dataset.load(i) for i in chunk]
        x = torch.stack([a for a, _ in loaded]).to(device)
        ref = torch.stack([r for _, r in loaded]).to(device) if full_reference else None  # type: ignore[misc]
        f = backbone(x, ref)
        if not feats:  # before caching a whole dataset of a feature map flattened
            check_feature_width(int(f[0].numel()), what=f"the backbone of dataset {dataset.name!r}")
        feats.append(f.float().cpu())
        scores.extend(dataset.samples[i].score for i in chunk)
        bar.update(len(chunk))
    bar.close()
    f = torch.cat(feats)
    if not bool(torch.isfinite(f).all()):
        raise InputError("the backbone produced NaN or Inf features")
    return f, torch.tensor(scores, dtype=torch.float32)


@dataclass
class TrainReport:
    """Held-out accuracy of the trained heads (smoothed median, n draws)."""

    srcc: float
    plcc: float
    n_train: int
    n_test: int
    epochs: int
    final_loss: float
    history: list[float] = field(default_factory=list)


def fit_fs_heads(
    features: torch.Tensor,
    targets: torch.Tensor,
    *,
    sigma: float,
    out_dim: int = 512,
    ftn_hidden: tuple[int, ...] = (),
    scorer_hidden: int = 128,
    epochs: int = 300,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[FTN, Scorer, list[float]]:
    """Fit FTN + scorer on cached features with MSE under feature noise N(0, sigma^2 I)."""
    sigma = check_sigma(sigma)
    if features.dim() != 2 or features.shape[0] != targets.shape[0]:
        raise InputError(f"features (N, D) and targets (N,) disagree: {tuple(features.shape)} vs {tuple(targets.shape)}")
    if features.shape[0] < 2:
        raise InputError("at least two training samples are needed")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ftn, scorer = FTN(features.shape[1], out_dim, ftn_hidden), Scorer(out_dim, scorer_hidden)
    # Initialize the layers from the explicit generator (no global RNG).
    with torch.no_grad():
        for mod in list(ftn.modules()) + list(scorer.modules()):
            if isinstance(mod, nn.Linear):
                bound = 1.0 / mod.in_features**0.5
                mod.weight.copy_((torch.rand(mod.weight.shape, generator=gen) * 2 - 1) * bound)
                mod.bias.copy_((torch.rand(mod.bias.shape, generator=gen) * 2 - 1) * bound)
        ftn.get_buffer("mean").copy_(features.mean(0))
        ftn.get_buffer("std").copy_(features.std(0).clamp_min(1e-6))
        scorer.get_buffer("target_mean").copy_(targets.mean())
        scorer.get_buffer("target_std").copy_(targets.std().clamp_min(1e-6))
    ftn.to(device).train()
    scorer.to(device).train()
    f_all, y_all = features.to(device), targets.to(device)
    opt = torch.optim.AdamW(list(ftn.parameters()) + list(scorer.parameters()), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    history: list[float] = []
    bar = tqdm(range(epochs), desc=f"FS-IQA heads (sigma={sigma:g})", disable=not progress, leave=False)
    for _ in bar:
        perm = torch.randperm(len(f_all), generator=gen).to(device)
        total = 0.0
        for start in range(0, len(perm), batch_size):
            b = perm[start : start + batch_size]
            z = ftn(f_all[b])
            noise = torch.randn(z.shape, generator=gen).to(device) * sigma
            loss = torch.mean((scorer(z + noise) - y_all[b]) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
        sched.step()
        history.append(total / len(perm))
        bar.set_postfix(mse=f"{history[-1]:.4g}")
    return ftn.eval(), scorer.eval(), history


@torch.no_grad()
def evaluate_heads(
    ftn: FTN, scorer: Scorer, features: torch.Tensor, targets: torch.Tensor, *, sigma: float,
    n: int = 2000, seed: int = 0,
) -> tuple[float, float]:
    """SRCC and PLCC of the smoothed median score against ``targets``."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    dev = next(ftn.parameters()).device
    z = ftn(features.to(dev))
    meds = []
    for i in range(0, len(z), 64):
        zi = z[i : i + 64]
        e = torch.randn((zi.shape[0], n, zi.shape[1]), generator=gen).to(dev) * sigma
        v = scorer((zi[:, None, :] + e).reshape(-1, zi.shape[1])).reshape(zi.shape[0], n)
        meds.append(v.median(dim=1).values.cpu())
    pred = torch.cat(meds).numpy().astype(np.float64)
    y = targets.numpy().astype(np.float64)
    if len(y) < 3 or np.std(pred) == 0:
        return float("nan"), float("nan")
    return float(spearmanr(pred, y).statistic), float(pearsonr(pred, y).statistic)


def train_fs_iqa(
    model: IQAModel,
    dataset: IQADataset,
    *,
    sigma: float,
    seed: int = 0,
    train_fraction: float = 0.8,
    epochs: int = 300,
    lr: float = 3e-3,
    n_eval: int = 2000,
    ftn_hidden: tuple[int, ...] = (),
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> tuple[FeatureSmoothedIQA, TrainReport]:
    """Train FS-IQA heads for ``model`` on ``dataset`` (split 80/20 by ``seed``).

    Returns the defended model and the held-out SRCC/PLCC of its smoothed score.
    """
    backbone = Backbone(model).to(device).eval()
    train, test = dataset.split(seed=seed, train_fraction=train_fraction)
    if len(train) < 2 or len(test) < 3:
        raise InputError(f"dataset {dataset.name!r} has too few samples for a train/test split ({len(dataset)})")
    fr = model.full_reference
    f_tr, y_tr = extract_features(backbone, train, full_reference=fr, device=device, progress=progress)
    f_te, y_te = extract_features(backbone, test, full_reference=fr, device=device, progress=progress)
    ftn, scorer, hist = fit_fs_heads(
        f_tr, y_tr, sigma=sigma, epochs=epochs, lr=lr, seed=seed, ftn_hidden=ftn_hidden,
        device=device, progress=progress,
    )
    srcc, plcc = evaluate_heads(ftn, scorer, f_te, y_te, sigma=sigma, n=n_eval, seed=seed)
    fs = FeatureSmoothedIQA(
        backbone, ftn, scorer, sigma=sigma, mode=model.mode, lower_better=not dataset.higher_better,
        score_range=dataset.score_range, name=f"fs-iqa({model.name})",
    )
    report = TrainReport(
        srcc=srcc, plcc=plcc, n_train=len(train), n_test=len(test), epochs=epochs,
        final_loss=hist[-1] if hist else float("nan"), history=hist,
    )
    return fs, report
