"""FS-IQA's trainable modules: the Feature Transform Normalize module and the scorer.

FS-IQA (Shumitskaya et al.), Sec. "Feature Preparation Pipeline" and
"Experiments / FS-IQA parameters": both are fully connected.  FTN reduces the
backbone features to 512 dimensions and constrains them to [0, 1] (here by a
final sigmoid), so that Gaussian noise of one sigma_f means the same thing for
every backbone; the scorer maps the (noisy) normalized features to one score.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from robustbench_iqa.errors import InputError
from robustbench_iqa.lipschitz.composition import LipschitzBound, cached_bound, sequential_bound

MAX_FEATURES = 262_144
"""The widest backbone FS-IQA accepts: FTN's first layer Linear(D, 512) then holds 2^27 weights
(512 MB in float32).  A spatial cut whose width grows with the image (a feature map flattened) is
refused with one line instead of allocating gigabytes; pool it to a fixed-size vector."""


def check_feature_width(width: int, *, what: str = "the backbone") -> int:
    """``width`` if FS-IQA can take it (<= :data:`MAX_FEATURES`), else one :class:`InputError` line."""
    if width > MAX_FEATURES:
        gib = width * 512 * 4 / 2**30
        raise InputError(
            f"{what} gives {width:,} features per image (more than {MAX_FEATURES:,}): FS-IQA's FTN "
            f"Linear({width}, 512) would need {gib:.1f} GiB; use a model whose backbone gives a fixed-size "
            f"vector (pool the feature map, or name a pooled layer with pyiqa:<metric>@<layer>)"
        )
    return width


class FTN(nn.Module):
    """f_norm = FTN(f_init) in [0, 1]^out_dim.

    The input is standardized with the training-set feature mean and standard
    deviation (buffers, set by :func:`robustbench_iqa.certify.training.train_fs_iqa`), then
    passed through ``Linear -> GELU`` blocks for each ``hidden`` width and a
    final ``Linear -> Sigmoid``.
    """

    def __init__(self, in_dim: int, out_dim: int = 512, hidden: Sequence[int] = ()) -> None:
        super().__init__()
        check_feature_width(int(in_dim), what="FTN's input")
        self.in_dim, self.out_dim, self.hidden = int(in_dim), int(out_dim), tuple(int(h) for h in hidden)
        self.register_buffer("mean", torch.zeros(self.in_dim))
        self.register_buffer("std", torch.ones(self.in_dim))
        layers: list[nn.Module] = []
        d = self.in_dim
        for h in self.hidden:
            layers += [nn.Linear(d, h), nn.GELU()]
            d = h
        layers += [nn.Linear(d, self.out_dim), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        mean, std = self.get_buffer("mean"), self.get_buffer("std")
        return self.net((f - mean) / std)

    def lipschitz_bound(self, input_size: tuple[int, int] | None = None) -> LipschitzBound:
        """Certified Lip(FTN) (L2 -> L2): the standardization diag(1/std) is folded into the first
        Linear layer exactly (||W diag(1/std)||_2 from its singular values, an SVD), then GELU (1.1289...) /
        Linear blocks and the final sigmoid (1/4).  ``input_size`` is unused (dense layers)."""
        def compute() -> LipschitzBound:
            first = self.net[0]
            assert isinstance(first, nn.Linear)
            scaled = nn.Linear(first.in_features, first.out_features, dtype=torch.float64)
            with torch.no_grad():
                scaled.weight.copy_(first.weight.detach().double() / self.get_buffer("std").double()[None, :])
            bound, _ = sequential_bound([scaled, *list(self.net)[1:]], None)
            return LipschitzBound(bound.value, (("FTN standardization folded into Linear", 1.0), *bound.terms))

        return cached_bound(self, "ftn", compute)


class Scorer(nn.Module):
    """S = Scorer(f) : R^in_dim -> R, ``Linear -> GELU -> Linear``.

    The output is de-standardized with the training-target mean and standard
    deviation (buffers), so the scorer predicts on the subjective-score scale.
    """

    def __init__(self, in_dim: int = 512, hidden: int = 128) -> None:
        super().__init__()
        self.in_dim, self.hidden_dim = int(in_dim), int(hidden)
        self.register_buffer("target_mean", torch.zeros(()))
        self.register_buffer("target_std", torch.ones(()))
        self.net = nn.Sequential(nn.Linear(self.in_dim, self.hidden_dim), nn.GELU(), nn.Linear(self.hidden_dim, 1))

    def split_first_linear(self) -> tuple[nn.Linear, Callable[[torch.Tensor], torch.Tensor]]:
        """``(W1, rest)`` with ``self(f) == rest(W1(f))``: the first layer and the remainder."""
        return self.net[0], self.from_hidden  # type: ignore[return-value]

    def from_hidden(self, h: torch.Tensor) -> torch.Tensor:
        """The scorer after its first Linear layer: ``h = W1 f + b1`` -> score."""
        return self.target_mean + self.target_std * self.net[1:](h).squeeze(-1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.from_hidden(self.net[0](f))


def split_first_linear(
    scorer: nn.Module,
) -> tuple[nn.Linear, Callable[[torch.Tensor], torch.Tensor]] | None:
    """``(W1, rest)`` with ``scorer(f) == rest(W1(f))``, or None when the scorer does not start with a Linear.

    Supports :class:`Scorer` (and any module with a ``split_first_linear`` method
    returning such a pair) and an ``nn.Sequential`` whose first module is ``nn.Linear``.
    """
    split = getattr(scorer, "split_first_linear", None)
    if callable(split):
        first, rest = split()
        return (first, rest) if isinstance(first, nn.Linear) else None
    if isinstance(scorer, nn.Sequential) and len(scorer) > 0 and isinstance(scorer[0], nn.Linear):
        return scorer[0], scorer[1:]
    return None
