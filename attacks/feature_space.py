"""Feature-space attack: auditing the premise of FS-IQA's Input Variation Estimator.

FS-IQA (Shumitskaya et al., Theorem 1) certifies the input radius
eps_x = sigma_f / ||J_B(x)||_2 for the feature map B = FTN o b, from the
first-order approximation ||B(x+u) - B(x)||_2 ~ ||J_B(x) u||_2 <= sigma_f.  The
certificate holds only if the *actual* feature change stays within sigma_f for
every ||u||_2 <= eps_x.  This attack searches for a violation:

    maximize_u  ||B(x+u) - B(x)||_2   s.t.  ||u||_2 <= eps_x,  x + u in [0, 1],

by projected gradient ascent in L2 (normalized-gradient steps, projection onto
the ball and the box) from several starts: the top right-singular direction of
J_B(x) if the caller has it (and its negative), then ``restarts`` random
directions on the sphere of radius eps_x.  The best point over all steps and
starts is kept per image.  Where the achieved change exceeds sigma_f the
premise of the linearized certificate failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from robustbench_iqa.attacks.base import check_steps
from robustbench_iqa.attacks.threat import ThreatModel, normalized_direction, per_image_eps, project
from robustbench_iqa.errors import InputError
from robustbench_iqa.validation import check_images

FeatureMap = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FeatureAttackResult:
    """Per image: the best perturbation u (B, 3, H, W), its feature change and input norm (B,)."""

    perturbation: torch.Tensor
    feature_change: torch.Tensor
    input_norm: torch.Tensor
    eps: torch.Tensor

    def premise_failed(self, sigma_f: float) -> torch.Tensor:
        """(B,) bool: the feature change exceeded the feature radius sigma_f."""
        return self.feature_change > float(sigma_f)


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def feature_space_attack(
    feature_map: FeatureMap, x: torch.Tensor, eps: float | torch.Tensor, *, steps: int = 20,
    restarts: int = 2, step_size: float | None = None, direction: torch.Tensor | None = None,
    generator: torch.Generator | None = None, progress: bool = False,
) -> FeatureAttackResult:
    """Maximize ||B(x+u) - B(x)||_2 over ||u||_2 <= eps (per image); see the module doc.

    Args:
        feature_map: per-sample map (B, 3, H, W) -> (B, m), e.g.
            ``lambda z: fs.normalized_features(z, ref)``.
        eps: radius per image, a float or a (B,) tensor (e.g. certified eps_x).
        steps: ascent steps per start; ``step_size`` defaults to 2.5 eps / steps.
        restarts: random starts (in addition to +-``direction``).
        direction: optional (B, 3, H, W) start direction (top singular vector).
    """
    x0 = check_images(x).detach()
    steps = check_steps(steps)
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 0:
        raise InputError(f"restarts must be an integer >= 0, got {restarts!r}")
    budget = per_image_eps(eps, x0)
    alpha = budget * (2.5 / steps) if step_size is None else torch.full_like(budget, float(step_size))
    starts: list[torch.Tensor] = []
    if direction is not None:
        if direction.shape != x0.shape:
            raise InputError(f"direction has shape {tuple(direction.shape)}, expected {tuple(x0.shape)}")
        d = normalized_direction(direction.detach().to(x0), ThreatModel.L2)
        starts += [d, -d]
    dev = generator.device if generator is not None else x0.device
    for _ in range(restarts):
        g = torch.randn(tuple(x0.shape), generator=generator, device=dev, dtype=x0.dtype).to(x0.device)
        starts.append(normalized_direction(g, ThreatModel.L2))
    if not starts:
        raise InputError("feature_space_attack needs restarts >= 1 or a start direction")
    with torch.no_grad():
        f0 = feature_map(x0).detach()
    best_u = torch.zeros_like(x0)
    best = torch.zeros(x0.shape[0], device=x0.device, dtype=x0.dtype)

    def change(z: torch.Tensor) -> torch.Tensor:
        return (feature_map(z) - f0).reshape(z.shape[0], -1).norm(dim=1)

    def keep_best(z: torch.Tensor, c: torch.Tensor) -> None:
        nonlocal best_u, best
        better = c > best
        best = torch.where(better, c, best)
        best_u = torch.where(_bcast(better, z), z - x0, best_u)

    total = len(starts) * steps
    with tqdm(total=total, desc="feature attack", leave=False, disable=not progress) as bar:
        for s in starts:
            z = project(x0 + s * _bcast(budget, x0), x0, budget, ThreatModel.L2).detach()
            for _ in range(steps):
                z.requires_grad_(True)
                c = change(z)
                (grad,) = torch.autograd.grad(c.pow(2).sum(), z)
                with torch.no_grad():
                    keep_best(z.detach(), c.detach())
                    z = project(z.detach() + _bcast(alpha, z) * normalized_direction(grad, ThreatModel.L2),
                                x0, budget, ThreatModel.L2)
                bar.update(1)
            with torch.no_grad():
                keep_best(z, change(z))
    norms = best_u.reshape(best_u.shape[0], -1).norm(dim=1)
    return FeatureAttackResult(best_u.detach(), best.detach(), norms.detach(), budget)
