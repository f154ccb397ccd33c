"""The one registry class: lazy entries, metadata without building, strict keywords, overrides."""

from __future__ import annotations

import pytest

from robustbench_iqa.certify.defense import DEFENSES, create_defense
from robustbench_iqa.data.registry import DATASETS, create_dataset
from robustbench_iqa.errors import InputError
from robustbench_iqa.models import Mode, create_model, list_models, model_info
from robustbench_iqa.registry import Registry


def _make(*, size: int, colour: str = "red") -> tuple[int, str]:
    return size, colour


def test_register_create_and_metadata_filters() -> None:
    reg: Registry[tuple[int, str]] = Registry("widget")

    @reg.register("small", kind="a", description="a small widget")
    def small(*, size: int = 1) -> tuple[int, str]:
        return size, "small"

    reg.add("big", _make, kind="b")
    assert reg.names() == ["big", "small"]
    assert reg.names(kind="a") == ["small"]
    assert reg.describe("small") == "a small widget"
    assert reg.create("small", size=3) == (3, "small")
    with pytest.raises(ValueError, match="registered twice"):
        reg.add("big", lambda: None)


def test_lazy_entries_import_on_first_use() -> None:
    reg: Registry[object] = Registry("widget")
    reg.add("lazy", "tests.test_registry:_make", kind="c")
    assert reg.metadata("lazy") == {"kind": "c"}  # no import needed for metadata
    assert reg.create("lazy", size=2) == (2, "red")
    reg.add("broken", "no_such_module_xyz:f")
    with pytest.raises(InputError, match="cannot be imported"):
        reg.create("broken")


def test_typos_raise_with_a_hint() -> None:
    reg: Registry[object] = Registry("widget")
    reg.add("w", _make)
    with pytest.raises(InputError, match="did you mean 'colour'"):
        reg.create("w", size=1, color="blue")
    with pytest.raises(InputError, match="unknown widget 'ww'; did you mean 'w'"):
        reg.create("ww")


def test_override_is_scoped() -> None:
    reg: Registry[object] = Registry("widget")
    reg.add("w", _make)
    with reg.override("w", lambda: "replaced"), reg.override("tmp", lambda: "tmp"):
        assert reg.create("w") == "replaced" and reg.create("tmp") == "tmp"
    assert "tmp" not in reg and reg.create("w", size=5) == (5, "red")


def test_builtin_registries_expose_metadata_without_building() -> None:
    assert set(list_models(mode="fr")) >= {"default-fr", "lpips", "dists", "dreamsim"}
    assert "default-nr" not in list_models(mode="fr")
    info = model_info("default-nr")
    assert info.mode is Mode.NR and info.lower_better is False and info.score_range == (0.0, 1.0)
    assert {"fs-iqa", "ms", "dms", "dms-iqa", "rs-reg", "cert-reg"} <= set(DEFENSES.names())
    medians = DEFENSES.names(statistic="median")
    assert {"dms", "dms-iqa", "fs-iqa", "ms"} <= set(medians) and not {"rs-reg", "cert-reg"} & set(medians)
    assert medians == sorted(n for n in DEFENSES.names() if DEFENSES.metadata(n)["statistic"] == "median")
    assert DATASETS.metadata("default")["references"] is True


def test_registered_metadata_matches_the_built_model() -> None:
    for name in ("default-nr", "default-fr"):
        m, info = create_model(name), model_info(name)
        assert (m.mode, m.lower_better, tuple(m.score_range)) == (info.mode, info.lower_better, info.score_range)


@pytest.mark.parametrize(("call", "hint"), [
    (lambda: create_defense("fs-iqa", create_model("default-nr"), sigma=0.25, chunk_sise=10), "chunk_size"),
    (lambda: create_defense("ms", create_model("default-nr"), sigma=0.25, batchsize=8), "batch_size"),
    (lambda: create_model("default-nr", weigths=None), "weights"),
    (lambda: create_dataset("default", sise=(8, 8)), "size"),
    (lambda: create_defense("fs-iqa", create_model("default-nr"), sigma=0.25).certify(
        __import__("torch").rand(1, 3, 16, 16), n=300, alpah=0.5), "alpha"),
])
def test_public_entry_points_refuse_misspelled_keywords(call, hint: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((InputError, TypeError), match=hint):
        call()
