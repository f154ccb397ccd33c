"""KonIQ-10k, KADID-10k and generic CSV loaders on tiny fake copies written in tmp_path."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustbench_iqa.data.registry import create_dataset, list_datasets
from robustbench_iqa.errors import DataWarning, InputError

H, W = 12, 16  # tiny stand-ins for the 384 x 512 originals


def _png(path: Path, seed: int, size: tuple[int, int] = (H, W)) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def _fake_koniq(root: Path, n: int = 10, folder: str = "1024x768") -> list[float]:
    mos = [1.0 + 4.0 * i / (n - 1) for i in range(n)]
    lines = ["image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,MOS_zscore"]
    for i, m in enumerate(mos):
        _png(root / folder / f"{1000 + i}.png", seed=i)
        lines.append(f"{1000 + i}.png,0,1,2,3,4,10,{m},0.5,{(m - 1) * 25}")
    (root / "koniq10k_scores_and_distributions.csv").write_text("\n".join(lines) + "\n")
    return mos


def _fake_kadid(root: Path, n_refs: int = 5, n_dist: int = 3) -> dict[str, str]:
    lines = ["dist_img,ref_img,dmos,var"]
    ref_of = {}
    for r in range(1, n_refs + 1):
        ref = f"I{r:02d}.png"
        _png(root / "images" / ref, seed=100 + r)
        for d in range(1, n_dist + 1):
            dist = f"I{r:02d}_{d:02d}_01.png"
            _png(root / "images" / dist, seed=1000 * r + d)
            lines.append(f"{dist},{ref},{1 + (r + d) % 5},0.1")
            ref_of[dist] = ref
    (root / "dmos.csv").write_text("\n".join(lines) + "\n")
    return ref_of


def test_registered() -> None:
    assert {"koniq10k", "kadid10k", "csv"} <= set(list_datasets())


# --------------------------------------------------------------------- KonIQ
@pytest.mark.parametrize("folder", ["1024x768", "512x384", "koniq10k_1024x768/1024x768"])
def test_koniq_parses_layouts_and_scores(tmp_path: Path, folder: str) -> None:
    mos = _fake_koniq(tmp_path, folder=folder)
    ds = create_dataset("koniq10k", root=tmp_path)
    assert len(ds) == len(mos)
    assert [s.score for s in ds] == pytest.approx(mos)
    assert all(s.ref is None for s in ds) and not ds.has_references
    assert ds.higher_better and ds.score_range == (1.0, 5.0)
    d = ds.describe()
    assert d["size"] == [384, 512] and d["resize"] == "resize" and d["n_samples"] == len(mos)
    x, ref = ds.load(0)
    assert ref is None and x.shape == (3, 384, 512) and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0


def test_koniq_zscore_and_native_size(tmp_path: Path) -> None:
    mos = _fake_koniq(tmp_path)
    from robustbench_iqa.data.koniq import koniq10k

    ds = koniq10k(root=tmp_path, score_column="MOS_zscore", size=None, resize="none")
    assert [s.score for s in ds] == pytest.approx([(m - 1) * 25 for m in mos])
    x, _ = ds.load(3)
    # Native size, pixel-exact against the PNG written by the test.
    expected = np.random.default_rng(3).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    assert torch.allclose(x, torch.from_numpy(expected).permute(2, 0, 1).float() / 255)


def _fake_koniq_sets(root: Path, sets: tuple[str, ...] = ("training", "training", "validation", "test", "test"),
                     folder: str = "512x384") -> list[float]:
    """koniq10k_distributions_sets.csv (0-100 MOS, official ``set`` column) and its images."""
    lines = ["image_name,c1,c2,c3,c4,c5,c_total,MOS,SD,set"]
    mos = []
    for i, name in enumerate(sets):
        _png(root / folder / f"{2000 + i}.jpg", seed=50 + i)
        mos.append(10.0 + 17.5 * i)
        lines.append(f"{2000 + i}.jpg,0,0,0.5,0.5,0,100,{mos[-1]},0.5,{name}")
    (root / "koniq10k_distributions_sets.csv").write_text("\n".join(lines) + "\n")
    return mos


def test_koniq_official_split_and_0_100_scores(tmp_path: Path) -> None:
    mos = _fake_koniq_sets(tmp_path)
    with pytest.raises(InputError, match="the 1-5 MOS.*score_column='MOS_zscore'"):
        create_dataset("koniq10k", root=tmp_path, score_column="MOS")  # only the sets file: no 1-5 MOS
    full = create_dataset("koniq10k", root=tmp_path)  # the default: the target the file has, named as such
    assert full.describe()["score_column"] == "MOS_zscore"
    assert [s.score for s in full] == pytest.approx(mos) and full.score_range == (0.0, 100.0)
    test = create_dataset("koniq10k", root=tmp_path, split="test", score_column="MOS_zscore")
    assert [s.name for s in test] == ["2003.jpg", "2004.jpg"]
    train = create_dataset("koniq10k", root=tmp_path, split="train", score_column="MOS_zscore")
    assert [s.name for s in train] == ["2000.jpg", "2001.jpg"]
    val = create_dataset("koniq10k", root=tmp_path, split="validation", score_column="MOS_zscore")
    assert [s.name for s in val] == ["2002.jpg"]
    d = test.describe()
    assert d["split"]["set"] == "test" and d["score_column"] == "MOS_zscore" and d["score_range"] == [0.0, 100.0]
    assert d["csv"].endswith("koniq10k_distributions_sets.csv") and d["score_file_column"] == "MOS"


def test_koniq_score_columns_checked_against_the_files(tmp_path: Path) -> None:
    _fake_koniq(tmp_path, n=4)
    with pytest.raises(InputError, match="koniq10k_distributions_sets.csv, not found"):
        create_dataset("koniq10k", root=tmp_path, split="test")
    scores = create_dataset("koniq10k", root=tmp_path)  # the scores file: 1-5 MOS
    assert scores.score_range == (1.0, 5.0) and len(scores) == 4
    z = create_dataset("koniq10k", root=tmp_path, score_column="MOS_zscore")
    assert z.score_range == (0.0, 100.0) and z.describe()["score_column"] == "MOS_zscore"
    assert [s.score for s in z] == pytest.approx([(s.score - 1) * 25 for s in scores])
    with pytest.raises(InputError, match="did you mean 'test'"):
        create_dataset("koniq10k", root=tmp_path, split="tset")
    with pytest.raises(InputError, match="did you mean 'MOS_zscore'"):
        create_dataset("koniq10k", root=tmp_path, score_column="MOS_zscor")
    with pytest.raises(InputError, match="takes no argument 'score_colum'.*did you mean 'score_column'"):
        create_dataset("koniq10k", root=tmp_path, score_colum="MOS")
    csv = tmp_path / "koniq10k_scores_and_distributions.csv"
    names = [f"{1000 + i}.png" for i in range(4)]
    # a sets file lacking images of the scores file: a warning, and those images are in no part
    (tmp_path / "koniq10k_distributions_sets.csv").write_text("image_name,MOS,set\n1000.png,0,training\n")
    with pytest.warns(DataWarning, match="3 image.s. of koniq10k_scores_and_distributions.csv have no set"):
        partial = create_dataset("koniq10k", root=tmp_path)
    assert len(partial) == 4 and [s.name for s in partial.select("train")] == ["1000.png"]
    # a sets file whose MOS is not the scores file's MOS_zscore (here off by 2): a warning; the
    # targets still come from the scores file
    rows = [f"{n},{i * 100 / 3 + 2},{'test' if i else 'training'}" for i, n in enumerate(names)]
    (tmp_path / "koniq10k_distributions_sets.csv").write_text("image_name,MOS,set\n" + "\n".join(rows) + "\n")
    with pytest.warns(DataWarning, match="should equal column 'MOS_zscore'.*differs by up to 2"):
        off = create_dataset("koniq10k", root=tmp_path, score_column="MOS_zscore")
    assert [s.score for s in off] == pytest.approx([i * 100 / 3 for i in range(4)])
    rows = [f"{n},{i * 100 / 3},{'test' if i else 'training'}" for i, n in enumerate(names)]
    (tmp_path / "koniq10k_distributions_sets.csv").write_text("image_name,MOS,set\n" + "\n".join(rows) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # consistent files: no warning
        assert [s.name for s in create_dataset("koniq10k", root=tmp_path, split="test")] == names[1:]
    # a 0-100 column where the 1-5 MOS belongs is refused with the column and the file
    csv.write_text(csv.read_text().replace(",1.0,0.5,", ",80,0.5,"))
    with pytest.raises(InputError, match=r"column 'MOS' of .*should hold MOS in \[1, 5\].*80"):
        create_dataset("koniq10k", root=tmp_path)
    rows[1] = rows[1].replace("test", "testing")
    (tmp_path / "koniq10k_distributions_sets.csv").write_text("image_name,MOS,set\n" + "\n".join(rows) + "\n")
    csv.write_text(csv.read_text().replace(",80,0.5,", ",1.0,0.5,"))
    with pytest.raises(InputError, match=r"has values \['testing'\]"):
        create_dataset("koniq10k", root=tmp_path)


def test_size_none_is_native_and_default_is_explicit(tmp_path: Path) -> None:
    from robustbench_iqa.data.images import parse_dataset_size, parse_size

    _fake_koniq(tmp_path, n=3)
    for size in (None, "native"):
        ds = create_dataset("koniq10k", root=tmp_path, size=size)
        assert ds.size is None and ds.load(0)[0].shape == (3, H, W)
        assert ds.describe()["size"] == "native" and ds.describe()["resize"] == "none"
    for ds in (create_dataset("koniq10k", root=tmp_path), create_dataset("koniq10k", root=tmp_path, size="default")):
        assert ds.size == (384, 512) and ds.load(0)[0].shape == (3, 384, 512)
    assert create_dataset("koniq10k", root=tmp_path, size="24x32").load(0)[0].shape == (3, 24, 32)
    assert parse_dataset_size(None) == "default" and parse_dataset_size("native") is None
    assert parse_dataset_size("8x16") == parse_size("8x16") == (8, 16) and parse_size(None) is None


def test_koniq_split_is_deterministic_80_20(tmp_path: Path) -> None:
    _fake_koniq(tmp_path, n=20)
    ds = create_dataset("koniq10k", root=tmp_path)
    tr1, te1 = ds.split(seed=3)
    tr2, te2 = ds.split(seed=3)
    tr3, _ = ds.split(seed=4)
    names = lambda d: [s.name for s in d]  # noqa: E731
    assert names(tr1) == names(tr2) and names(te1) == names(te2)
    assert (len(tr1), len(te1)) == (16, 4)
    assert set(names(tr1)).isdisjoint(names(te1)) and set(names(tr1)) | set(names(te1)) == set(names(ds))
    assert names(tr3) != names(tr1)


def test_koniq_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="root not found"):
        create_dataset("koniq10k", root=tmp_path / "nope")
    with pytest.raises(InputError, match="needs --root"):
        create_dataset("koniq10k")
    with pytest.raises(InputError, match="neither koniq10k_scores_and_distributions.csv nor"):
        create_dataset("koniq10k", root=tmp_path)
    _fake_koniq(tmp_path, n=8)
    # Missing image files are listed at construction.
    (tmp_path / "1024x768" / "1002.png").unlink()
    (tmp_path / "1024x768" / "1005.png").unlink()
    with pytest.raises(InputError, match=r"2 image file\(s\) missing.*1002\.png.*1005\.png"):
        create_dataset("koniq10k", root=tmp_path)
    # Missing column.
    csv = tmp_path / "koniq10k_scores_and_distributions.csv"
    csv.write_text("image_name,SD\n1000.png,0.5\n")
    with pytest.raises(InputError, match=r"lacks column\(s\) \['MOS'\]"):
        create_dataset("koniq10k", root=tmp_path)
    csv.write_text("image_name,MOS\n1000.png,good\n")
    with pytest.raises(InputError, match="non-numeric value.*'MOS'.*row 1"):
        create_dataset("koniq10k", root=tmp_path)


def test_koniq_no_image_folder(tmp_path: Path) -> None:
    (tmp_path / "koniq10k_scores_and_distributions.csv").write_text("image_name,MOS\na.png,3\n")
    with pytest.raises(InputError, match="no image folder"):
        create_dataset("koniq10k", root=tmp_path)


def test_unreadable_image_fails_at_load(tmp_path: Path) -> None:
    _fake_koniq(tmp_path, n=4)
    (tmp_path / "1024x768" / "1001.png").write_bytes(b"this is not a png")
    ds = create_dataset("koniq10k", root=tmp_path)  # existence is fine
    ds.load(0)
    with pytest.raises(InputError, match=r"cannot read image .*1001\.png"):
        ds.load(1)


# --------------------------------------------------------------------- KADID
def test_kadid_pairs_and_groups(tmp_path: Path) -> None:
    ref_of = _fake_kadid(tmp_path)
    ds = create_dataset("kadid10k", root=tmp_path, size=(24, 32))
    assert len(ds) == len(ref_of) and ds.has_references
    for s in ds:
        assert s.ref == tmp_path / "images" / ref_of[s.name]
        assert s.group == Path(ref_of[s.name]).stem
    x, ref = ds.load(4)
    assert x.shape == ref.shape == (3, 24, 32)
    assert ds.describe()["size"] == [24, 32]


def test_kadid_accepts_parent_folder(tmp_path: Path) -> None:
    _fake_kadid(tmp_path / "kadid10k", n_refs=2, n_dist=2)
    ds = create_dataset("kadid10k", root=tmp_path)
    assert len(ds) == 4 and ds.root == tmp_path / "kadid10k"


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_kadid_split_has_no_reference_leakage(tmp_path: Path, seed: int) -> None:
    _fake_kadid(tmp_path, n_refs=10, n_dist=4)
    ds = create_dataset("kadid10k", root=tmp_path)
    train, test = ds.split(seed=seed)
    refs_train = {s.ref for s in train}
    refs_test = {s.ref for s in test}
    assert refs_train.isdisjoint(refs_test)
    assert (len(refs_train), len(refs_test)) == (8, 2)  # 80/20 of the references
    assert len(train) + len(test) == len(ds)
    again = ds.split(seed=seed)[1]
    assert [s.name for s in again] == [s.name for s in test]


def test_kadid_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="dmos.csv not found"):
        create_dataset("kadid10k", root=tmp_path)
    _fake_kadid(tmp_path, n_refs=2, n_dist=2)
    (tmp_path / "images" / "I02.png").unlink()
    with pytest.raises(InputError, match=r"1 image file\(s\) missing.*I02\.png"):
        create_dataset("kadid10k", root=tmp_path)
    (tmp_path / "dmos.csv").write_text("dist_img,dmos\nI01_01_01.png,3\n")
    with pytest.raises(InputError, match=r"lacks column\(s\) \['ref_img'\]"):
        create_dataset("kadid10k", root=tmp_path)


def test_bad_size_and_resize(tmp_path: Path) -> None:
    _fake_kadid(tmp_path, n_refs=1, n_dist=1)
    with pytest.raises(InputError, match="unknown resize policy"):
        create_dataset("kadid10k", root=tmp_path, resize="stretch")
    with pytest.raises(InputError, match="positive"):
        create_dataset("kadid10k", root=tmp_path, size=(0, 10))


# ----------------------------------------------------------------------- CSV
def test_csv_dataset_relative_paths(tmp_path: Path) -> None:
    sub = tmp_path / "data"
    _png(sub / "imgs" / "a.png", 1)
    _png(sub / "imgs" / "b.png", 2)
    _png(sub / "refs" / "r.png", 3)
    (sub / "labels.csv").write_text("image,ref,score\nimgs/a.png,refs/r.png,0.25\nimgs/b.png,refs/r.png,0.75\n")
    for root in (sub / "labels.csv", sub):
        ds = create_dataset("csv", root=root, size=(8, 8))
        assert [s.score for s in ds] == [0.25, 0.75]
        assert ds.samples[0].image == sub / "imgs" / "a.png"
        assert all(s.ref == sub / "refs" / "r.png" and s.group == "refs/r.png" for s in ds)
        assert ds.score_range == (0.25, 0.75)
        x, ref = ds.load(1)
        assert x.shape == ref.shape == (3, 8, 8)


def test_csv_dataset_nr_and_groups(tmp_path: Path) -> None:
    for i in range(5):
        _png(tmp_path / f"{i}.png", i)
    rows = "\n".join(f"{i}.png,{i},{'g' + str(i // 2)}" for i in range(5))
    (tmp_path / "s.csv").write_text("image,score,group\n" + rows + "\n")
    ds = create_dataset("csv", root=tmp_path)
    assert all(s.ref is None for s in ds)
    train, test = ds.split(seed=0)
    assert {s.group for s in train}.isdisjoint({s.group for s in test})


def test_csv_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="expected one \\*.csv"):
        create_dataset("csv", root=tmp_path)
    (tmp_path / "a.csv").write_text("img,score\nx.png,1\n")
    with pytest.raises(InputError, match=r"lacks column\(s\) \['image'\]"):
        create_dataset("csv", root=tmp_path)
    (tmp_path / "a.csv").write_text("image,score\nx.png,1\n")
    with pytest.raises(InputError, match=r"missing.*x\.png"):
        create_dataset("csv", root=tmp_path)
    (tmp_path / "b.csv").write_text("image,score\n")
    with pytest.raises(InputError, match="expected one"):
        create_dataset("csv", root=tmp_path)
    with pytest.raises(InputError, match="has no rows"):
        create_dataset("csv", root=tmp_path / "b.csv")
    with pytest.raises(InputError, match="CSV file not found|root not found"):
        create_dataset("csv", root=tmp_path / "c.csv")
