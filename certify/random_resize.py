"""Randomized resizing and padding (Xie et al. 2018), an empirical defense attacked through EOT.

Xie et al. 2018, "Mitigating Adversarial Effects Through Randomization" (Sec. 3): the input
(299 x 299) is resized by nearest-neighbour interpolation to a random size rnd x rnd,
rnd ~ U{299, ..., 330}, then zero-padded at a random position to 331 x 331.  For an
H x W image and ``max_scale`` s (default 331/299, the paper's ratio) one draw is

    (Hp, Wp) = (round(H s), round(W s))               the padded size (fixed per image size),
    h' ~ U{H, ..., Hp - 1},  w' = min(round(W h'/H), Wp)   the resized size (aspect kept),
    top ~ U{0, ..., Hp - h'},  left ~ U{0, ..., Wp - w'},
    T(x) = pad(resize_nearest(x, (h', w')), top, left)   with ``padding`` ("zeros" as in the
                                                         paper, or "reflect" / "replicate").

For an FR model the reference gets the same draw (same size and offsets), so the metric
compares aligned images; only ``x`` is attacked.  One draw is shared by every image of a
batch, so an image's draws do not depend on what it is batched with.

**Randomized, no certificate.**  ``sigma`` is 0 (no Gaussian noise: the store keys rows by
sigma).  ``noisy_scores(x, ref, n=n, generator=g)`` returns f(T_j(x)[, T_j(ref)]) for n
independent draws T_j from ``g``, shape (B, n), differentiable in x (nearest-neighbour
resizing and padding are selections: the true gradient, no approximation needed);
``predict(x, ref, n=n, generator=g)`` is their mean, shape (B,) (the statistic is the mean;
``eot_aggregate`` is ``"mean"``, so an EOT attack (Athalye et al. 2018, Sec. 4.2) with fresh
draws attacks exactly the expected score that ``predict`` estimates).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from robustbench_iqa.certify.defense import register_defense
from robustbench_iqa.certify.purification import Gradient, PurifiedIQA, check_no_noise
from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import IQAModel
from robustbench_iqa.registry import checked_keywords
from robustbench_iqa.validation import check_n, check_pair

XIE_SCALE = 331 / 299
PADDINGS = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate"}


def padded_size(h: int, w: int, *, max_scale: float) -> tuple[int, int]:
    """(round(H s), round(W s)); refused when it leaves no room to resize (round(H s) <= H)."""
    hp, wp = round(h * max_scale), round(w * max_scale)
    if hp <= h or wp < w:
        raise InputError(f"max_scale={max_scale:g} leaves no room to resize a {h}x{w} image "
                         f"(padded size {hp}x{wp}); use a larger max_scale")
    return hp, wp


def draw_transforms(n: int, h: int, w: int, *, max_scale: float,
                    generator: torch.Generator | None) -> list[tuple[int, int, int, int]]:
    """n draws (h', w', top, left) of the module doc, from ``generator``."""
    hp, wp = padded_size(h, w, max_scale=max_scale)
    dev = generator.device if generator is not None else torch.device("cpu")
    sizes = torch.randint(h, hp, (n,), generator=generator, device=dev).tolist()
    u = torch.rand((n, 2), generator=generator, device=dev, dtype=torch.float64).tolist()
    out = []
    for hh, (a, b) in zip(sizes, u):
        ww = min(round(w * hh / h), wp)
        top = min(int(a * (hp - hh + 1)), hp - hh)
        left = min(int(b * (wp - ww + 1)), wp - ww)
        out.append((int(hh), int(ww), top, left))
    return out


class RandomResizePadIQA(PurifiedIQA):
    """Random resizing and padding in front of the model (Xie et al. 2018); see the module doc."""

    defense_name = "random-resize"
    randomized = True

    def __init__(self, model: IQAModel, *, max_scale: float = XIE_SCALE, padding: str = "zeros",
                 batch_size: int = 64) -> None:
        super().__init__(model, gradient=Gradient.EXACT, batch_size=batch_size)
        if isinstance(max_scale, bool) or not isinstance(max_scale, (int, float)) or not (
                math.isfinite(max_scale) and max_scale > 1.0):
            raise InputError(f"max_scale must be a finite number > 1, got {max_scale!r}")
        if padding not in PADDINGS:
            raise InputError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
        self.max_scale = float(max_scale)
        self.padding = padding

    def settings(self) -> dict[str, Any]:
        return {"max_scale": self.max_scale, "padding": self.padding}

    def apply_draw(self, x: torch.Tensor, draw: tuple[int, int, int, int], out_size: tuple[int, int],
              cache: dict[tuple[int, int], torch.Tensor] | None = None) -> torch.Tensor:
        """T(x) for one draw (h', w', top, left), padded to ``out_size``."""
        hh, ww, top, left = draw
        resized = None if cache is None else cache.get((hh, ww))
        if resized is None:
            resized = F.interpolate(x, size=(hh, ww), mode="nearest")
            if cache is not None:
                cache[(hh, ww)] = resized
        hp, wp = out_size
        return F.pad(resized, (left, wp - ww - left, top, hp - hh - top), mode=PADDINGS[self.padding])

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Not defined: the transform is random; use :meth:`noisy_scores` with a generator."""
        raise InputError("random-resize has no single transform; draw scores with noisy_scores(..., generator=)")

    def noisy_scores(
        self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """f(T_j(x)[, T_j(ref)]) for n draws T_j, shape (B, n), differentiable in x."""
        x, ref = check_pair(x, ref, full_reference=self.full_reference)
        n = check_n(n)
        bsz, (h, w) = x.shape[0], x.shape[-2:]
        out_size = padded_size(h, w, max_scale=self.max_scale)
        draws = draw_transforms(n, h, w, max_scale=self.max_scale, generator=generator)
        cache_x: dict[tuple[int, int], torch.Tensor] = {}
        cache_r: dict[tuple[int, int], torch.Tensor] = {}
        per_chunk = max(1, self.batch_size // bsz)
        cols = []
        for start in range(0, n, per_chunk):
            chunk = draws[start : start + per_chunk]
            z = torch.stack([self.apply_draw(x, d, out_size, cache_x) for d in chunk], dim=1)  # (B, c, 3, Hp, Wp)
            r = None
            if ref is not None:
                with torch.no_grad():
                    r = torch.stack([self.apply_draw(ref, d, out_size, cache_r) for d in chunk], dim=1)
                r = r.reshape(bsz * len(chunk), *r.shape[2:])
            cols.append(self.model(z.reshape(bsz * len(chunk), *z.shape[2:]), r).reshape(bsz, len(chunk)))
        return torch.cat(cols, dim=1)

    @checked_keywords
    @torch.no_grad()
    def predict(
        self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int = 32,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The mean score over ``n`` random draws from ``generator``, shape (B,)."""
        return self.noisy_scores(x, ref, n=n, generator=generator).mean(dim=1)


@register_defense("random-resize", space="input", statistic="mean", certified=False, noise=False, randomized=True,
                  description="empirical: random resizing and padding, attacked through EOT (Xie et al. 2018)")
def create_random_resize(model: IQAModel, *, sigma: float = 0.0, max_scale: float = XIE_SCALE,
                         padding: str = "zeros", batch_size: int = 64) -> RandomResizePadIQA:
    """Random resize-and-pad in front of ``model`` (no certificate; ``sigma`` must be 0)."""
    check_no_noise(sigma, defense="random-resize")
    return RandomResizePadIQA(model, max_scale=max_scale, padding=padding, batch_size=batch_size)
