"""Splits as the field uses them: KonIQ-10k's official sets, a seeded split only where none exists.

The reference is the fixture's own record of which image is in which official set (written
to the sets file by :mod:`tests.official_layouts`) and a brute-force re-implementation of the
seeded split.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from robustbench_iqa.cli import _common as c
from robustbench_iqa.data import create_dataset
from robustbench_iqa.data.base import Split, parse_split
from robustbench_iqa.errors import InputError
from robustbench_iqa.runner.config import VerifyConfig
from robustbench_iqa.runner.workspace import dataset_settings, open_split
from tests.official_layouts import make_kadid, make_koniq


def _names(ds: object) -> list[str]:
    return [s.name for s in ds]  # type: ignore[attr-defined]


@pytest.fixture()
def koniq(tmp_path: Path):  # type: ignore[no-untyped-def]
    return tmp_path, make_koniq(tmp_path, n=30)


def test_official_sets_are_selected(koniq) -> None:  # type: ignore[no-untyped-def]
    root, k = koniq
    ds = create_dataset("koniq10k", root=root)
    assert ds.has_official_split() and len(ds) == 30
    for split, label in (("train", "training"), ("training", "training"), ("validation", "validation"),
                         ("test", "test")):
        part = ds.select(split)
        assert _names(part) == k.names_of(label)
        assert part.selection["kind"] == "official" and part.selection["set"] == label
        # the seed of a seeded split has no say over an official one
        assert _names(ds.select(split, seed=123)) == k.names_of(label)
    train, test = ds.split(seed=5)
    assert _names(train) == k.names_of("training") and _names(test) == k.names_of("test")
    assert not set(_names(train)) & set(_names(test))


def test_loader_split_option_equals_select(koniq) -> None:  # type: ignore[no-untyped-def]
    root, k = koniq
    test = create_dataset("koniq10k", root=root, split="test")
    assert _names(test) == k.names_of("test") and test.describe()["split"]["kind"] == "official"


def test_verify_config_and_cli_get_the_official_test_set(koniq) -> None:  # type: ignore[no-untyped-def]
    root, k = koniq
    cfg = VerifyConfig(dataset="koniq10k", root=str(root), limit=1000, size="24x32").validate()
    assert cfg.split == "test"
    assert _names(open_split(cfg)) == k.names_of("test")
    rec = dataset_settings(cfg)
    assert rec["split"]["kind"] == "official" and rec["split"]["set"] == "test" and rec["samples"] == 30
    val = VerifyConfig(dataset="koniq10k", root=str(root), limit=1000, split="validation").validate()
    assert _names(open_split(val)) == k.names_of("validation")
    args = argparse.Namespace(dataset="koniq10k", root=str(root), size="24x32", resize=None, limit=None,
                              split=c.split_name("test"), split_seed=0)
    assert _names(c.load_dataset(args)) == k.names_of("test")


def test_cli_split_flag_parses_every_command() -> None:
    from robustbench_iqa.cli import build_parser

    for command in ("predict", "certify", "attack"):
        args = build_parser(command).parse_args([command, "--dataset", "koniq10k", "--split", "training"])
        assert args.split == "train" and args.split_seed == 0
    assert build_parser("verify").parse_args(["verify", "--split", "validation"]).split == "validation"
    assert build_parser("verify").parse_args(["verify"]).split is None
    assert build_parser("train").parse_args(["train", "--split-seed", "3"]).split_seed == 3
    with pytest.raises(Exception, match="did you mean 'test'"):
        build_parser("predict").parse_args(["predict", "--split", "tset"])


def test_seeded_split_for_kadid_by_reference_matches_brute_force(tmp_path: Path) -> None:
    ref_of = make_kadid(tmp_path, n_refs=10)
    ds = create_dataset("kadid10k", root=tmp_path, size="24x32")
    assert not ds.has_official_split()
    for seed in (0, 1, 7):
        # brute force: permute the sorted references with numpy's default_rng(seed), first 80% train
        refs = sorted({Path(r).stem for r in ref_of.values()})
        perm = np.random.default_rng(seed).permutation(len(refs))
        train_refs = {refs[j] for j in perm[:8]}
        train, test = ds.select("train", seed=seed), ds.select("test", seed=seed)
        assert {s.group for s in train} == train_refs
        assert {s.group for s in test} == set(refs) - train_refs
        assert len(train) + len(test) == len(ds)
        assert test.selection == {"split": "test", "kind": "seeded", "seed": seed, "train_fraction": 0.8,
                                  "by": "reference", "n": len(test)}
    with pytest.raises(InputError, match="no official split, so no validation set"):
        ds.select("validation")


def test_split_names_and_errors(tmp_path: Path) -> None:
    assert parse_split("training") is Split.TRAIN and parse_split(Split.TEST) is Split.TEST
    with pytest.raises(InputError, match="did you mean 'test'"):
        parse_split("tset")
    with pytest.raises(InputError, match="split"):
        VerifyConfig(split="tests").validate()
    make_koniq(tmp_path, n=10, sets_file=False)
    ds = create_dataset("koniq10k", root=tmp_path)  # no sets file: no official split
    assert not ds.has_official_split()
    assert ds.select("test").selection["kind"] == "seeded"
    with pytest.raises(InputError, match="official split is in koniq10k_distributions_sets.csv"):
        create_dataset("koniq10k", root=tmp_path, split="test")


def test_train_uses_official_sets_and_records_them(koniq, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from safetensors import safe_open

    from robustbench_iqa.cli import main

    root, k = koniq
    out = tmp_path / "ckpt"
    assert main(["train", "--model", "default-nr", "--dataset", "koniq10k", "--root", str(root), "--size", "24x32",
                 "--epochs", "2", "--n-eval", "8", "--out", str(out), "--no-progress"]) == 0
    (path,) = out.glob("*.safetensors")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    text = "".join(meta.values())
    assert '"set": "training"' in text and '"set": "test"' in text
    assert f'"n": {len(k.names_of("test"))}' in text


def test_csv_with_its_own_set_column_has_an_official_split(tmp_path: Path) -> None:
    from PIL import Image

    rows = ["image,score,set"]
    for i, st in enumerate(["training", "train", "val", "test", "test"]):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{i},{st}")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    ds = create_dataset("csv", root=tmp_path / "list.csv", size=None)
    assert _names(ds.select("train")) == ["0.png", "1.png"] and _names(ds.select("validation")) == ["2.png"]
    assert _names(ds.select("test")) == ["3.png", "4.png"] and ds.select("test").selection["kind"] == "official"
    (tmp_path / "list.csv").write_text("\n".join(rows).replace(",val", ",holdout") + "\n")
    with pytest.raises(InputError, match=r"column 'set' .* has values \['holdout'\]"):
        create_dataset("csv", root=tmp_path / "list.csv", size=None)


def test_sets_file_alone_gives_the_official_split_and_names_its_target(tmp_path: Path) -> None:
    k = make_koniq(tmp_path, n=15, scores_file=False)
    cfg = VerifyConfig(dataset="koniq10k", root=str(tmp_path), limit=1000).validate()
    part = open_split(cfg)
    assert _names(part) == k.names_of("test")
    assert [s.score for s in part] == pytest.approx([z for n, z in zip(k.names, k.zscore) if n in set(_names(part))])
    rec = dataset_settings(cfg)
    assert rec["score_column"] == "MOS_zscore" and rec["score_range"] == [0.0, 100.0]
