"""A universal adversarial perturbation (UAP) for IQA: trained on a set, applied to unseen images.

After Shumitskaya, Antsiferova and Vatolin, "Universal Perturbation Attack on
Differentiable No-Reference Image- and Video-Quality Metrics", BMVC 2022: one
perturbation delta, the same for every image, raises a metric's score on images
it was not trained on.  :meth:`UniversalPerturbation.fit` trains it by projected
gradient ascent on the summed gain of a training batch,

    delta_{t+1} = Proj_{B(0, eps)}( delta_t + alpha * direction( grad_delta sum_i g(S(clip_[0,1](x_i + delta_t))) ) ),

from delta_0 = 0, over minibatches of ``batch_size`` training images taken in a
random order (from the caller's generator); T = ``steps`` updates, alpha = 2.5 eps / T
by default, direction = sign (Linf) or unit vector (L2).  (The paper trains with
Adam on COCO crops; the ascent here is the suite's projected gradient step.)

:meth:`UniversalPerturbation.run` applies the trained delta to any batch: delta
is tiled periodically to the image size and cropped, projected onto each image's
eps-ball (L2: rescaled if tiling made it longer) and the sum clipped to [0, 1].
No per-image search happens at attack time (the attack's point is that it needs
none), so, unlike the iterative attacks, an image can end worse than clean; its
``improvement`` is then negative and the ``no-progress`` check flags it.

A trained delta is saved with :meth:`save` and loaded with
``UniversalPerturbation(eps=..., perturbation=PATH)`` (a safetensors file).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm.auto import tqdm

from robustbench_iqa.attacks.base import Attack, AttackResult, build_result, check_steps, start_best
from robustbench_iqa.attacks.objective import Objective
from robustbench_iqa.attacks.registry import register_attack
from robustbench_iqa.attacks.threat import (
    ThreatModel,
    as_threat_model,
    check_eps,
    normalized_direction,
    per_image_eps,
)
from robustbench_iqa.errors import InputError
from robustbench_iqa.registry import checked_keywords
from robustbench_iqa.validation import check_finite_scores, check_images

KEY = "perturbation"


def tile_to(delta: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Tile a (1, C, h, w) perturbation periodically over (B, C, H, W) and crop it."""
    b, c, h, w = shape
    if delta.shape[1] != c:
        raise InputError(f"the perturbation has {delta.shape[1]} channels, the images {c}")
    reps = (1, 1, math.ceil(h / delta.shape[2]), math.ceil(w / delta.shape[3]))
    return delta.repeat(*reps)[..., :h, :w].expand(b, c, h, w)


@register_attack("uap", threat=("linf", "l2"), gradient=True,
                 reference="Shumitskaya et al. 2022 (BMVC), universal perturbation for NR metrics",
                 description="one perturbation trained on a set of images (fit), applied to unseen ones")
class UniversalPerturbation(Attack):
    """``UniversalPerturbation(*, eps, norm="linf", steps=100, step_size=None, batch_size=8, perturbation=None)``.

    ``perturbation`` is a file written by :meth:`save`; without it, call :meth:`fit` first.
    """

    name = "uap"

    def __init__(self, *, eps: float, norm: ThreatModel | str = ThreatModel.LINF, steps: int = 100,
                 step_size: float | None = None, batch_size: int = 8,
                 perturbation: str | Path | None = None) -> None:
        self.eps = check_eps(eps)
        self.norm = as_threat_model(norm)
        self.steps = check_steps(steps)
        if step_size is not None and not (step_size > 0):
            raise InputError(f"step_size must be > 0, got {step_size!r}")
        self.step_size = step_size
        self.batch_size = check_steps(batch_size, what="batch_size")
        self.delta: torch.Tensor | None = None
        if perturbation is not None:
            self.delta = self._load(Path(perturbation).expanduser())

    def __repr__(self) -> str:
        fitted = "fitted" if self.delta is not None else "not fitted"
        return f"UniversalPerturbation(eps={self.eps:g}, norm={self.norm.value!r}, {fitted})"

    # ------------------------------------------------------------- training
    def fit(
        self, objective: Objective, images: torch.Tensor, refs: torch.Tensor | None = None, *,
        generator: torch.Generator | None = None, progress: bool = False,
    ) -> UniversalPerturbation:
        """Train delta on ``images`` (N, C, H, W) (and their ``refs`` for FR models); returns self."""
        xs = check_images(images).detach()
        if refs is not None:
            refs = check_images(refs, name="refs").detach()
            if refs.shape != xs.shape:
                raise InputError(f"refs {tuple(refs.shape)} must match images {tuple(xs.shape)}")
        n = xs.shape[0]
        eps = torch.tensor([self.eps], dtype=xs.dtype, device=xs.device)
        alpha = self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps
        delta = torch.zeros((1, *xs.shape[1:]), dtype=xs.dtype, device=xs.device)
        dev = generator.device if generator is not None else torch.device("cpu")
        order = torch.randperm(n, generator=generator, device=dev).to(xs.device)
        pos = 0
        for _ in tqdm(range(self.steps), desc="uap fit", leave=False, disable=not progress):
            if pos >= n:
                order, pos = torch.randperm(n, generator=generator, device=dev).to(xs.device), 0
            idx = order[pos:pos + self.batch_size]
            pos += self.batch_size
            d = delta.clone().requires_grad_(True)
            x = (xs[idx] + d).clamp(0.0, 1.0)
            scores, _ = objective.surrogate(x, None if refs is None else refs[idx])
            check_finite_scores(scores.detach(), what="attacked score")
            (g,) = torch.autograd.grad(objective.gain(scores).sum(), d)
            g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
            with torch.no_grad():
                step = delta + alpha * normalized_direction(g, self.norm)
                delta = self._ball(step, eps)
        self.delta = delta.detach()
        return self

    # -------------------------------------------------------------- attack
    def perturbation_for(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The trained delta tiled to ``x`` and projected onto each image's ball (not yet clipped)."""
        if self.delta is None:
            raise InputError("the universal perturbation is not trained: call fit(...) or pass perturbation=FILE")
        return self._ball(tile_to(self.delta.to(x), x.shape), eps)

    def _ball(self, d: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Project perturbations (B, ...) onto the eps-ball of the threat model (no box)."""
        if self.norm is ThreatModel.LINF:
            e = eps.reshape(-1, 1, 1, 1)
            return torch.max(torch.min(d, e), -e)
        n = d.reshape(d.shape[0], -1).norm(dim=1).clamp_min(1e-12)
        return d * torch.clamp(eps / n, max=1.0).reshape(-1, 1, 1, 1)

    @checked_keywords
    def run(
        self, objective: Objective, x: torch.Tensor, ref: torch.Tensor | None = None, *,
        eps: float | torch.Tensor | None = None, generator: torch.Generator | None = None,
        progress: bool = False, clean: torch.Tensor | None = None,
    ) -> AttackResult:
        """Apply the trained perturbation to ``x`` (no search; see the module doc)."""
        x0 = check_images(x).detach()
        if ref is not None:
            ref = check_images(ref, name="ref").detach()
        budget = per_image_eps(self.eps if eps is None else eps, x0)
        result = start_best(objective, x0, ref, clean)
        adv = (x0 + self.perturbation_for(x0, budget)).clamp(0.0, 1.0)
        s = check_finite_scores(objective.evaluate(adv, ref), what="attacked score")
        result.replace(adv, s, objective.gain(s))
        return build_result(x0, result, torch.zeros(x0.shape[0], dtype=torch.long), evaluations=2)

    # ----------------------------------------------------------- save/load
    def save(self, path: str | Path) -> Path:
        """Write the trained delta (1, C, h, w) to a safetensors file."""
        from safetensors.torch import save_file

        if self.delta is None:
            raise InputError("nothing to save: the universal perturbation is not trained")
        p = Path(path).expanduser()
        save_file({KEY: self.delta.detach().cpu().contiguous()}, str(p),
                  metadata={"eps": repr(self.eps), "norm": self.norm.value})
        return p

    def _load(self, path: Path) -> torch.Tensor:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not path.is_file():
            raise InputError(f"perturbation file not found: {path}")
        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"cannot read perturbation file {path}: {exc}") from None
        d = state.get(KEY)
        if d is None or d.dim() != 4 or d.shape[0] != 1:
            raise InputError(f"{path} holds no (1, C, H, W) tensor named {KEY!r}")
        if not bool(torch.isfinite(d).all()):
            raise InputError(f"{path}: the perturbation contains NaN or Inf values")
        return d
