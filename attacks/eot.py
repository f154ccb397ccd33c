"""Adaptive attacks on randomized defenses: expectation over transformation (EOT).

A smoothed defense's score is random through its noise; a gradient attack on
one draw chases noise.  EOT (Athalye et al. 2018) attacks an aggregate of the
n noisy scores v_1..v_n of ``defense.noisy_scores(x, ref, n=n)``, which is
differentiable in x (:class:`robustbench_iqa.defense_protocol.Defense`):

* ``"mean"``: (1/n) sum_i v_i, the Monte-Carlo estimate of E[v];
* ``"soft-median"``: a kernel-weighted mean of the order statistics,
  sum_k w_k v_(k) with w_k proportional to exp(-((k - (n+1)/2) / (h n))^2 / 2).
  It tends to the median (what median smoothing outputs) as h -> 0 and to the
  mean as h -> infinity, and is differentiable through the sort;
* a callable ``(v: (B, n)) -> (B,)``, differentiable in ``v``: a defense whose statistic is
  neither a mean nor a median declares its own (``eot_aggregate``, e.g. a soft quantile), so
  an adaptive attack aims at the statistic the defense outputs.

Noise: ``"fresh"`` draws new noise at every step (the generator advances);
``"fixed"`` restores the generator's state at every call, so every step sees the
same draws (a deterministic surrogate; it can overfit those draws).

The recorded scores are the defense's own prediction ``defense.predict`` with
``eval_n`` draws from a generator seeded with ``eval_seed`` at each call
(common random numbers for the clean and the adversarial image).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum, StrEnum

import torch

from robustbench_iqa.attacks.objective import Objective, Target, as_target
from robustbench_iqa.defense_protocol import Defense
from robustbench_iqa.errors import InputError
from robustbench_iqa.validation import check_n


class Aggregate(StrEnum):
    """The built-in aggregates (a defense may declare a callable instead)."""

    MEAN = "mean"
    SOFT_MEDIAN = "soft-median"


AggregateFn = Callable[[torch.Tensor], torch.Tensor]
"""A defense's own differentiable aggregate of its noisy scores, (B, n) -> (B,)."""


def as_aggregate(value: Aggregate | str | AggregateFn) -> Aggregate | AggregateFn:
    """A built-in aggregate by name, or the defense's own callable as it is."""
    if callable(value) and not isinstance(value, (str, Enum)):
        return value
    return _enum(Aggregate, value, "EOT aggregate")  # type: ignore[return-value]


class NoiseMode(StrEnum):
    FRESH = "fresh"
    FIXED = "fixed"


def _enum(cls: type[Enum], value: object, what: str) -> Enum:
    try:
        return cls(value.lower() if isinstance(value, str) else value)
    except ValueError:
        raise InputError(f"unknown {what} {value!r}; use one of {', '.join(m.value for m in cls)}") from None


def soft_median(v: torch.Tensor, *, bandwidth: float = 0.1) -> torch.Tensor:
    """Kernel-weighted mean of the order statistics of each row of ``v`` (B, n) -> (B,)."""
    if not (bandwidth > 0):
        raise InputError(f"bandwidth must be > 0, got {bandwidth!r}")
    n = v.shape[-1]
    k = torch.arange(1, n + 1, device=v.device, dtype=v.dtype)
    w = torch.exp(-0.5 * ((k - (n + 1) / 2) / (bandwidth * n)) ** 2)
    w = w / w.sum()
    return (v.sort(dim=-1).values * w).sum(dim=-1)


class EOTScore:
    """``(x, ref) -> (B,)``: the aggregate of ``n`` noisy defense scores (see module doc)."""

    def __init__(
        self, defense: Defense, *, n: int, aggregate: Aggregate | str | AggregateFn = Aggregate.MEAN,
        noise: NoiseMode | str = NoiseMode.FRESH, generator: torch.Generator | None = None,
        bandwidth: float = 0.1,
    ) -> None:
        self.defense, self.n = defense, check_n(n)
        self.aggregate = as_aggregate(aggregate)
        self.noise = _enum(NoiseMode, noise, "EOT noise mode")
        if self.noise is NoiseMode.FIXED and generator is None:
            raise InputError("fixed EOT noise needs a torch.Generator (its state is replayed at every step)")
        self.generator = generator
        self._state = generator.get_state() if generator is not None else None
        self.bandwidth = float(bandwidth)

    def __call__(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return self.with_draws(x, ref)[0]

    def with_draws(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The aggregate (B,) and the n noisy scores it aggregates (B, n), both differentiable."""
        if self.noise is NoiseMode.FIXED:
            assert self.generator is not None and self._state is not None
            self.generator.set_state(self._state)
        v = self.defense.noisy_scores(x, ref, n=self.n, generator=self.generator)
        if self.aggregate is Aggregate.MEAN:
            return v.mean(dim=1), v
        if self.aggregate is Aggregate.SOFT_MEDIAN:
            return soft_median(v, bandwidth=self.bandwidth), v
        out = self.aggregate(v)  # type: ignore[operator]
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (v.shape[0],):
            raise InputError(f"the defense's EOT aggregate must map scores (B, n) to (B,), got "
                             f"{getattr(out, 'shape', type(out).__name__)} from {tuple(v.shape)}")
        return out, v


class DefendedScore:
    """``(x, ref) -> (B,)``: ``defense.predict`` with a freshly seeded generator per call."""

    def __init__(self, defense: Defense, *, n: int, seed: int, device: torch.device | str = "cpu") -> None:
        self.defense, self.n, self.seed, self.device = defense, check_n(n), int(seed), torch.device(device)

    def __call__(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        gen = torch.Generator(device=self.device).manual_seed(self.seed)
        return self.defense.predict(x, ref, n=self.n, generator=gen)


def eot_objective(
    defense: Defense, *, n: int = 8, aggregate: Aggregate | str | AggregateFn = Aggregate.MEAN,
    noise: NoiseMode | str = NoiseMode.FRESH, generator: torch.Generator | None = None,
    target: Target | str = Target.INCREASE, target_score: float | None = None,
    eval_n: int = 500, eval_seed: int = 0, bandwidth: float = 0.1,
) -> Objective:
    """An :class:`Objective` that attacks ``defense`` through EOT and records its predictions."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return Objective(
        EOTScore(defense, n=n, aggregate=aggregate, noise=noise, generator=generator, bandwidth=bandwidth),
        lower_better=bool(defense.lower_better), target=as_target(target), target_score=target_score,
        eval_fn=DefendedScore(defense, n=eval_n, seed=eval_seed, device=gen_device),
    )
