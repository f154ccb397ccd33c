"""Training the denoisers of DMS and DMS-IQA: the losses and the loop.

DMS (Chiang et al. 2020, after Salman et al. 2020's denoised smoothing): the
denoiser D is trained for Gaussian denoising at the defense's sigma,

    L_dms = || D(z) - x ||^2 (mean over pixels),  z = clip(x + e, 0, 1), e ~ N(0, sigma^2 I).

DMS-IQA (Shumitskaya et al., "Stochastic BIQA: Median Randomized Smoothing for
Certified Blind Image Quality Assessment"): a composite loss that also keeps
the defended metric's correlation with subjective scores,

    L = w_pix * L_dms + w_score * mean_i (f(D(z_i)) - y_i)^2 + w_rank * L_rank,

where f is the (frozen) IQA model and y the subjective score mapped onto the
model's scale and orientation (:func:`targets_on_model_scale`).  L_rank is a
pairwise logistic ranking loss (RankNet, Burges et al. 2005) over all pairs
of the batch with different targets:

    L_rank = mean_{i,j: y_i > y_j} log(1 + exp(-(p_i - p_j) / T)),

differentiable, and small when the predicted order matches the target order.
The model's parameters receive no gradient; only D is trained.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import pearsonr, spearmanr
from tqdm.auto import tqdm

from robustbench_iqa.certify.denoiser import DnCNN, save_denoiser
from robustbench_iqa.certify.input_smoothing import MedianSmoothedIQA
from robustbench_iqa.data.base import IQADataset
from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import IQAModel
from robustbench_iqa.validation import check_n, check_sigma

LOSSES = ("dms", "dms-iqa")
DEFAULT_WEIGHTS = {"dms": (1.0, 0.0, 0.0), "dms-iqa": (1.0, 0.1, 0.01)}


# ------------------------------------------------------------------ losses
def pixel_loss(denoised: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all pixels and channels."""
    return torch.mean((denoised - clean) ** 2)


def score_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between predicted and target scores (B,)."""
    return torch.mean((pred - target) ** 2)


def rank_loss(pred: torch.Tensor, target: torch.Tensor, *, temperature: float = 0.1) -> torch.Tensor:
    """Pairwise logistic ranking loss: mean over ordered pairs y_i > y_j of softplus(-(p_i - p_j)/T).

    Zero (with a graph) when no pair has different targets.
    """
    if not temperature > 0:
        raise InputError(f"rank-loss temperature must be > 0, got {temperature!r}")
    diff_p = (pred[:, None] - pred[None, :]) / temperature
    mask = target[:, None] > target[None, :]
    if not bool(mask.any()):
        return pred.sum() * 0.0
    return F.softplus(-diff_p[mask]).mean()


def targets_on_model_scale(y: torch.Tensor, *, dataset: IQADataset, model: IQAModel) -> torch.Tensor:
    """Subjective scores mapped linearly from the dataset's range onto the model's range and orientation.

    u = (y - y_lo) / (y_hi - y_lo), flipped (1 - u) when exactly one of the
    dataset and the model is lower-is-better; target = m_lo + (m_hi - m_lo) u.
    """
    y_lo, y_hi = dataset.score_range
    m_lo, m_hi = model.score_range
    if not y_hi > y_lo or not m_hi > m_lo:
        raise InputError(f"score ranges must be increasing: dataset {dataset.score_range}, model {model.score_range}")
    u = (y - y_lo) / (y_hi - y_lo)
    if dataset.higher_better == bool(model.lower_better):
        u = 1.0 - u
    return m_lo + (m_hi - m_lo) * u


def check_weights(loss: str, weights: tuple[float, float, float] | None) -> tuple[float, float, float]:
    if loss not in LOSSES:
        raise InputError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    if weights is None:
        return DEFAULT_WEIGHTS[loss]
    try:
        w = tuple(float(v) for v in weights)
    except (TypeError, ValueError):
        raise InputError(f"weights must be three numbers (w_pix, w_score, w_rank), got {weights!r}") from None
    if len(w) != 3 or not all(np.isfinite(w)) or min(w) < 0 or sum(w) == 0:
        raise InputError(f"weights must be three finite numbers >= 0, not all zero, got {weights!r}")
    if loss == "dms" and (w[1] != 0 or w[2] != 0):
        raise InputError("loss 'dms' is pure denoising: w_score and w_rank must be 0 (use loss 'dms-iqa')")
    return w  # type: ignore[return-value]


# ------------------------------------------------------------------- data
def _load_all(ds: IQADataset, *, full_reference: bool) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    xs, refs = [], []
    for i in range(len(ds)):
        x, r = ds.load(i)
        xs.append(x)
        refs.append(r)
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) != 1:
        raise InputError(f"dataset {ds.name!r} has images of different sizes {sorted(shapes)[:3]}; give a working size")
    if full_reference and any(r is None for r in refs):
        raise InputError(f"dataset {ds.name!r} has no reference images, but the model is full-reference")
    ref = torch.stack(refs) if full_reference else None  # type: ignore[arg-type]
    return torch.stack(xs), ref, torch.tensor([s.score for s in ds.samples], dtype=torch.float32)


def _random_crop(x: torch.Tensor, size: int | None, gen: torch.Generator) -> torch.Tensor:
    """One random size x size crop per image (the whole image when ``size`` is None or too large)."""
    h, w = x.shape[-2:]
    if size is None or (size >= h and size >= w):
        return x
    ch, cw = min(size, h), min(size, w)
    top = torch.randint(0, h - ch + 1, (len(x),), generator=gen)
    left = torch.randint(0, w - cw + 1, (len(x),), generator=gen)
    return torch.stack([xi[:, t : t + ch, s : s + cw] for xi, t, s in zip(x, top.tolist(), left.tolist())])


@dataclass
class DenoiserReport:
    """Held-out quality of a trained denoiser and of the defended metric (median smoothing)."""

    psnr_noisy: float
    psnr_denoised: float
    srcc: float
    plcc: float
    srcc_undefended: float
    plcc_undefended: float
    n_train: int
    n_test: int
    history: list[dict[str, float]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return 10.0 * torch.log10(1.0 / mse)


def _corr(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    if len(y) < 3 or np.std(pred) == 0 or np.std(y) == 0:
        return float("nan"), float("nan")
    return float(spearmanr(pred, y).statistic), float(pearsonr(pred, y).statistic)


@torch.no_grad()
def evaluate_denoiser(
    model: IQAModel, denoiser: DnCNN, x: torch.Tensor, ref: torch.Tensor | None, y: torch.Tensor, *,
    sigma: float, n: int = 32, generator: torch.Generator, batch_size: int = 8,
) -> dict[str, float]:
    """PSNR (noisy and denoised vs clean, one draw) and SRCC/PLCC of the DMS score vs ``y``."""
    denoiser.eval()
    defense = MedianSmoothedIQA(model, sigma=sigma, denoiser=denoiser, batch_size=max(batch_size, 1) * 4)
    dev = model.device
    psnr_n, psnr_d, pred, plain = [], [], [], []
    for s in range(0, len(x), batch_size):
        xb = x[s : s + batch_size].to(dev)
        rb = None if ref is None else ref[s : s + batch_size].to(dev)
        e = torch.randn(xb.shape, generator=generator).to(dev) * sigma
        z = (xb + e).clamp(0, 1)
        psnr_n.append(_psnr(z, xb).cpu())
        psnr_d.append(_psnr(denoiser(z).clamp(0, 1), xb).cpu())
        pred.append(defense.predict(xb, rb, n=n, generator=generator).cpu())
        plain.append(model(xb, rb).cpu())
    yn = y.numpy().astype(np.float64)
    srcc, plcc = _corr(torch.cat(pred).double().numpy(), yn)
    srcc0, plcc0 = _corr(torch.cat(plain).double().numpy(), yn)
    return {"psnr_noisy": float(torch.cat(psnr_n).mean()), "psnr_denoised": float(torch.cat(psnr_d).mean()),
            "srcc": srcc, "plcc": plcc, "srcc_undefended": srcc0, "plcc_undefended": plcc0}


# ------------------------------------------------------------------- loop
def train_denoiser(
    model: IQAModel,
    dataset: IQADataset,
    *,
    sigma: float,
    loss: str = "dms",
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 8,
    weights: tuple[float, float, float] | None = None,
    seed: int = 0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    depth: int = 5,
    width: int = 32,
    train_fraction: float = 0.8,
    n_eval: int = 8,
    eval_limit: int | None = 64,
    patch_size: int | None = None,
    rank_temperature: float = 0.1,
    out: str | Path | None = None,
    progress: bool = True,
) -> tuple[DnCNN, DenoiserReport]:
    """Train a DnCNN for DMS (``loss="dms"``) or DMS-IQA (``loss="dms-iqa"``) at noise level ``sigma``.

    The dataset is split by ``seed`` (group-aware, ``train_fraction`` for
    training); images are loaded once.  Noise, shuffling and initialization
    come from ``generator`` (default: a CPU generator seeded with ``seed``).
    ``weights`` = (w_pix, w_score, w_rank); defaults: dms (1, 0, 0),
    dms-iqa (1, 0.1, 0.01).  Returns the denoiser (eval mode) and the held-out
    report; with ``out`` the checkpoint is written there (safetensors, with the
    weights, settings and report in its metadata).

    Speed: pure denoising (dms) trains on random ``patch_size`` crops (default
    48, as DnCNN trains on patches; the network is fully convolutional), while
    dms-iqa needs whole images because the IQA score of a crop is not the
    image's score.  The held-out report uses at most ``eval_limit`` test images
    and ``n_eval`` noise draws per image for the defended SRCC/PLCC.
    """
    sigma = check_sigma(sigma)
    w = check_weights(loss, weights)
    for nm, val in (("epochs", epochs), ("batch_size", batch_size), ("depth", depth), ("width", width)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise InputError(f"{nm} must be a positive integer, got {val!r}")
    n_eval = check_n(n_eval)
    if not lr > 0:
        raise InputError(f"lr must be > 0, got {lr!r}")
    use_model = w[1] > 0 or w[2] > 0
    if patch_size is not None and use_model:
        raise InputError("patch_size applies to pure denoising (loss 'dms'); dms-iqa scores whole images")
    patch = (48 if patch_size is None else patch_size) if not use_model else None
    if patch is not None and (isinstance(patch, bool) or not isinstance(patch, int) or patch < 8):
        raise InputError(f"patch_size must be an integer >= 8, got {patch!r}")
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    train, test = dataset.split(seed=seed, train_fraction=train_fraction)
    if len(train) < 2 or len(test) < 1:
        raise InputError(f"dataset {dataset.name!r} has too few samples for a train/test split ({len(dataset)})")
    fr = model.full_reference
    x_tr, r_tr, y_tr = _load_all(train, full_reference=fr)
    t_tr = targets_on_model_scale(y_tr, dataset=dataset, model=model)
    dev = torch.device(device)
    model = model.to(dev).eval()
    den = DnCNN(depth=depth, width=width).reset_parameters(gen).to(dev).train()
    opt = torch.optim.Adam(den.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    history: list[dict[str, float]] = []
    bar = tqdm(range(epochs), desc=f"{loss} denoiser (sigma={sigma:g})", disable=not progress, leave=False)
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        for _ in bar:
            sums = {"loss": 0.0, "pixel": 0.0, "score": 0.0, "rank": 0.0}
            perm = torch.randperm(len(x_tr), generator=gen)
            for s in range(0, len(perm), batch_size):
                b = perm[s : s + batch_size]
                xb = _random_crop(x_tr[b], patch, gen).to(dev)
                z = (xb + torch.randn(xb.shape, generator=gen).to(dev) * sigma).clamp(0, 1)
                d = den(z)
                parts = {"pixel": pixel_loss(d, xb)}
                if use_model:
                    pred = model(d.clamp(0, 1), None if r_tr is None else r_tr[b].to(dev))
                    tb = t_tr[b].to(dev)
                    parts["score"] = score_loss(pred, tb)
                    parts["rank"] = rank_loss(pred, tb, temperature=rank_temperature)
                total = w[0] * parts["pixel"] + w[1] * parts.get("score", 0.0) + w[2] * parts.get("rank", 0.0)
                opt.zero_grad()
                total.backward()  # type: ignore[union-attr]
                opt.step()
                sums["loss"] += total.item() * len(b)  # type: ignore[union-attr]
                for k, part in parts.items():
                    sums[k] += part.item() * len(b)
            sched.step()
            history.append({k: v / len(perm) for k, v in sums.items()})
            bar.set_postfix(loss=f"{history[-1]['loss']:.4g}")
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    den.eval()
    x_te, r_te, y_te = _load_all(test.head(eval_limit), full_reference=fr)
    ev = evaluate_denoiser(model, den, x_te, r_te, y_te, sigma=sigma, n=n_eval, generator=gen, batch_size=batch_size)
    config = {"loss": loss, "sigma": sigma, "weights": list(w), "rank_loss": "pairwise-logistic",
              "rank_temperature": rank_temperature, "epochs": epochs, "lr": lr, "batch_size": batch_size,
              "seed": seed, "train_fraction": train_fraction, "n_eval": n_eval, "eval_limit": eval_limit,
              "patch_size": patch, "model": model.name,
              "dataset": dataset.describe(), "denoiser": den.config()}
    report = DenoiserReport(n_train=len(train), n_test=len(x_te), history=history, config=config, **ev)
    if out is not None:
        save_denoiser(out, den, sigma=sigma, loss=loss, model=model.name, extra=report.to_dict())
    return den, report
