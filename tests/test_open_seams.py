"""Open sets instead of closed lists: a defense's own EOT aggregate, auditability declared by each
guarantee, plugin entry points resolved to their decorated registrations, studies listed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from robustbench_iqa.attacks.eot import Aggregate, EOTScore, soft_median
from robustbench_iqa.certify.result import Guarantee
from robustbench_iqa.cli import main
from robustbench_iqa.errors import InputError
from robustbench_iqa.registry import Entry, Registry
from robustbench_iqa.studies.audit import AUDITABLE


class _Noisy:
    """A defense whose noisy scores are x's pixel means plus fixed offsets (B, n)."""

    lower_better, score_range = False, (0.0, 1.0)

    def __init__(self, n: int) -> None:
        self.offsets = torch.linspace(-1, 1, n)

    def noisy_scores(self, x: torch.Tensor, ref: torch.Tensor | None = None, *, n: int,
                     generator: torch.Generator | None = None) -> torch.Tensor:
        return x.flatten(1).mean(dim=1, keepdim=True) * (1 + self.offsets[:n])


def _upper_quartile(v: torch.Tensor) -> torch.Tensor:
    return v.sort(dim=1).values[:, 3 * v.shape[1] // 4]


def test_a_defense_s_own_aggregate_is_what_eot_attacks() -> None:
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    d = _Noisy(8)
    out = EOTScore(d, n=8, aggregate=_upper_quartile)(x)
    want = _upper_quartile(d.noisy_scores(x, n=8))
    assert torch.equal(out, want)
    (g,) = torch.autograd.grad(out.sum(), x)
    # d/dx of mean(x) * (1 + o_k) for the selected k = 6 (offsets increase): (1 + o_6) / 48 per pixel
    assert torch.allclose(g, torch.full_like(x, float(1 + d.offsets[6]) / 48))
    # the built-in names still work, and mean differs from the quartile
    assert torch.allclose(EOTScore(d, n=8, aggregate="mean")(x), d.noisy_scores(x, n=8).mean(dim=1))
    assert torch.allclose(EOTScore(d, n=8, aggregate=Aggregate.SOFT_MEDIAN)(x), soft_median(d.noisy_scores(x, n=8)))


def test_an_aggregate_of_the_wrong_shape_or_name_is_refused() -> None:
    x = torch.rand(2, 3, 4, 4)
    with pytest.raises(InputError, match=r"must map scores \(B, n\) to \(B,\)"):
        EOTScore(_Noisy(8), n=8, aggregate=lambda v: v)(x)
    with pytest.raises(InputError, match="unknown EOT aggregate"):
        EOTScore(_Noisy(8), n=8, aggregate="trimmed")


def test_each_guarantee_says_whether_it_can_be_audited() -> None:
    assert {g for g in Guarantee if g.auditable} == {Guarantee.PERCENTILE_BOUNDS, Guarantee.MEAN_BOUNDS}
    assert set(AUDITABLE) == {"percentile_bounds", "mean_bounds"}


def test_a_plugin_entry_point_resolves_to_its_decorated_registration(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    reg: Registry[object] = Registry("gadget")
    (tmp_path / "gadget_plugin.py").write_text(
        "from tests.test_open_seams import GADGETS\n"
        "@GADGETS.register('spinner', colour='red')\n"
        "def make(*, size: int = 1):\n    return ('spinner', size)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(globals(), "GADGETS", reg)
    reg._entries["spinner"] = Entry("spinner", "gadget_plugin:make", "plugin gadget_plugin:make", {}, plugin=True)
    try:
        assert reg.metadata("spinner") == {"colour": "red"}  # imported to read it; no "registered twice"
        assert reg.create("spinner", size=3) == ("spinner", 3)
        with pytest.raises(ValueError, match="registered twice"):
            reg.add("spinner", lambda: None)
    finally:
        sys.modules.pop("gadget_plugin", None)


def test_studies_have_an_entry_point_group_of_their_own() -> None:
    from robustbench_iqa.studies.base import STUDIES

    assert STUDIES.plural == "studies" and Registry("model").plural == "models"


def test_list_studies(capsys: pytest.CaptureFixture[str]) -> None:
    from robustbench_iqa.studies.base import list_studies

    assert main(["list", "studies"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("studies:\n")
    assert [line.split()[0] for line in out.splitlines()[1:]] == list_studies()
    assert "Certificate audit" in out and "after certify" in out
