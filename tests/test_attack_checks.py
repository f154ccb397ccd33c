"""Attack-strength checks: closed forms, scipy's sign test, and planted failures that must be flagged."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from robustbench_iqa import create_dataset, create_model
from robustbench_iqa.attacks import (
    IFGSM,
    PGD,
    AttackRecord,
    Flag,
    Objective,
    SquareAttack,
    Thresholds,
    check_records,
    compare_white_black,
    eot_objective,
    flag_counts,
)
from robustbench_iqa.attacks.checks import check_record, mark_masking, split_half_spread
from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import IQAModel
from tests.toy_models import ToyNR, random_images

CROP = (slice(None), slice(None), slice(32, 64), slice(40, 88))


def _rec(**kw: object) -> AttackRecord:
    base = {"clean_score": 0.5, "adv_score": 0.6, "l2": 0.1, "linf": 0.01, "iterations": 3, "improvement": 0.1}
    return AttackRecord(**{**base, **kw})  # type: ignore[arg-type]


def test_flags_from_records() -> None:
    assert check_record(_rec()).flags == ()
    assert check_record(_rec(improvement=0.0)).flags == (Flag.NO_PROGRESS,)
    assert Flag.ZERO_GRADIENT in check_record(_rec(zero_grad_steps=1)).flags
    assert Flag.NONFINITE_GRADIENT in check_record(_rec(nonfinite_grad_steps=2)).flags
    # q = s / sqrt(n): 3 / sqrt(4) = 1.5 > 1 is flagged, 1.8 / sqrt(4) = 0.9 is not.
    flagged = check_record(_rec(eot_spread=3.0, eot_draws=4))
    assert Flag.EOT_DISAGREEMENT in flagged.flags and flagged.eot_noise == pytest.approx(1.5)
    assert check_record(_rec(eot_spread=1.8, eot_draws=4)).flags == ()
    assert check_record(_rec(improvement=0.05), Thresholds(min_improvement=0.1)).flags == (Flag.NO_PROGRESS,)
    counts = flag_counts(check_records([_rec(), _rec(improvement=0.0), _rec(improvement=0.0, zero_grad_steps=1)]))
    assert counts["no-progress"] == 2 and counts["zero-gradient"] == 1 and counts["eot-disagreement"] == 0
    assert check_record(_rec(improvement=0.0, zero_grad_steps=1)).to_dict()["flags"] == "no-progress,zero-gradient"
    with pytest.raises(InputError):
        Thresholds(max_eot_noise=0.0)


def test_split_half_spread_estimates_per_draw_spread() -> None:
    """Draws g_i = mu + sigma z_i in d dims: per-draw relative spread sqrt(d) sigma / ||mu||."""
    g = torch.Generator().manual_seed(0)
    d, n, sigma = 20000, 8, 0.02
    mu = torch.ones(3, d) * torch.tensor([[1.0], [0.5], [0.25]]) / math.sqrt(d)
    draws = mu[:, None, :] + sigma * torch.randn(3, n, d, generator=g)
    ga, gb = draws[:, : n // 2].mean(dim=1), draws[:, n // 2 :].mean(dim=1)
    expected = math.sqrt(d) * sigma / mu.norm(dim=1)
    s = split_half_spread(ga, gb, n)
    assert torch.allclose(s.double(), expected.double(), rtol=0.1), (s, expected)
    both_zero = split_half_spread(torch.zeros(1, 4), torch.zeros(1, 4), 2)
    assert math.isnan(float(both_zero[0]))
    assert math.isinf(float(split_half_spread(torch.ones(1, 4), -torch.ones(1, 4), 2)[0]))


def test_compare_white_black_matches_scipy_sign_test() -> None:
    white = [0.10, 0.20, 0.05, 0.30, 0.00, 0.02]
    black = [0.15, 0.25, 0.05, 0.10, 0.01, 0.03]
    m = compare_white_black(white, black)
    assert (m.n_black_better, m.n_white_better) == (4, 1)  # one tie dropped
    assert m.p_value == pytest.approx(stats.binomtest(4, 5, 0.5, alternative="greater").pvalue)
    assert m.black_better == (True, True, False, False, True, True)
    assert m.flagged and m.black_gain < m.white_gain  # more wins than losses, though a lower mean
    assert not compare_white_black([1.0, 1.0], [0.0, 0.0]).flagged
    assert compare_white_black([0.0, 0.0, 0.0], [0.0, 0.0, 0.3]).flagged  # higher mean
    with pytest.raises(InputError):
        compare_white_black([1.0], [1.0, 2.0])


class Quantized(IQAModel):
    """A planted gradient-masking defense: round(x * 8) / 8 (zero gradient) in front of a model."""

    def __init__(self, model: IQAModel) -> None:
        super().__init__()
        self.model = model
        self.name, self.mode = f"quantized-{model.name}", model.mode
        self.lower_better, self.score_range = model.lower_better, model.score_range

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(torch.round(x * 8) / 8, ref)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    _, test = create_dataset("default").split(seed=0)
    return torch.stack([test.load(i)[0] for i in (1, 2, 3, 4)])[CROP]


def test_planted_masking_is_flagged_and_black_box_wins(images: torch.Tensor) -> None:
    model = Quantized(create_model("default-nr"))
    obj = Objective.from_model(model)
    eps = 8 / 255
    white = IFGSM(eps=eps, steps=10).run(obj, images)
    pgd = PGD(eps=eps, steps=10).run(obj, images, generator=torch.Generator().manual_seed(0))
    black = SquareAttack(eps=eps, queries=100).run(obj, images, generator=torch.Generator().manual_seed(0))
    for c in white.checks:
        assert Flag.ZERO_GRADIENT in c.flags and Flag.NO_PROGRESS in c.flags
    assert all(Flag.ZERO_GRADIENT in c.flags for c in pgd.checks)
    assert all(r.iterations == 0 for r in white.records)  # stopped at once: nothing to follow
    m = compare_white_black(pgd.improvements.numpy(), black.improvements.numpy())
    assert m.flagged and m.n_black_better >= 3, m
    marked = mark_masking(pgd.checks, m)
    assert [Flag.BLACK_BOX_STRONGER in c.flags for c in marked] == list(m.black_better)
    assert flag_counts(marked, list(Flag))["black-box-stronger"] == m.n_black_better
    # Without the quantizer the same white-box attack works and nothing is flagged.
    clean = IFGSM(eps=eps, steps=10).run(Objective.from_model(create_model("default-nr")), images)
    assert all(c.ok for c in clean.checks)


def test_nonfinite_gradients_are_counted_and_zeroed() -> None:
    model = ToyNR()

    def score(x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        # sqrt(0 * x) is 0 forward but has a NaN gradient at one pixel.
        return model(x) + torch.sqrt(x[:, 0, 0, 0] * 0.0)

    x = random_images(3, 16, 16, seed=1)
    res = IFGSM(eps=4 / 255, steps=3).run(Objective(score), x)
    assert all(r.nonfinite_grad_steps == 3 for r in res.records)
    assert all(Flag.NONFINITE_GRADIENT in c.flags for c in res.checks)
    assert bool(torch.isfinite(res.adv).all()) and float(res.improvements.min()) > 0


class NoisyDefense(torch.nn.Module):
    """Planted EOT disagreement (the EOT interface): draw i scores ToyNR(x) + scale * <Z_i, x>, Z_i ~ N(0, I).

    Per-draw gradients are grad ToyNR + scale * Z_i: their spread around the mean grows with ``scale``.
    """

    lower_better = False
    score_range = (0.0, 1.0)

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale, self.base = scale, ToyNR()

    def noisy_scores(self, x, ref=None, *, n, generator=None):  # type: ignore[no-untyped-def]
        z = torch.randn((x.shape[0], n, *x.shape[1:]), generator=generator)
        return self.base(x)[:, None] + self.scale * (z * x[:, None]).sum(dim=(2, 3, 4))

    def predict(self, x, ref=None, *, n, generator=None):  # type: ignore[no-untyped-def]
        return self.noisy_scores(x, ref, n=n, generator=generator).median(dim=1).values


@pytest.mark.parametrize(("scale", "flagged"), [(1.0, True), (1e-6, False)])
def test_eot_disagreement_flag(scale: float, flagged: bool) -> None:
    x = random_images(3, 16, 16, seed=2)
    obj = eot_objective(NoisyDefense(scale), n=4, generator=torch.Generator().manual_seed(0), eval_n=21)
    res = IFGSM(eps=4 / 255, steps=2).run(obj, x)
    assert all(r.eot_draws == 4 and r.eot_spread is not None for r in res.records)
    raised = [Flag.EOT_DISAGREEMENT in c.flags for c in res.checks]
    assert all(raised) if flagged else not any(raised), [r.eot_spread for r in res.records]


def test_randomized_selection_uses_the_recorded_evaluation_and_its_count() -> None:
    """eval_fn runs 1 + R (1 + floor((T - 1) / k)) times; the recorded score is eval_fn's, never worse than clean."""
    defense = NoisyDefense(1e-3)
    calls = {"n": 0}
    obj = eot_objective(defense, n=4, generator=torch.Generator().manual_seed(0), eval_n=31, eval_seed=5)
    inner = obj.eval_fn

    def counting(x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        calls["n"] += 1
        return inner(x, ref)  # type: ignore[misc]

    obj = Objective(obj.score_fn, lower_better=False, eval_fn=counting)
    x = random_images(3, 16, 16, seed=3)
    res = PGD(eps=8 / 255, steps=5, restarts=2, eval_every=2).run(obj, x, generator=torch.Generator().manual_seed(1))
    assert calls["n"] == 1 + 2 * (1 + (5 - 1) // 2) == res.records[0].evaluations
    again = inner(res.adv)  # type: ignore[misc]
    assert torch.allclose(res.adv_scores, again, atol=1e-6)
    assert float(res.improvements.min()) >= 0
