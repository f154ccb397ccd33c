"""The CLI end to end on toy models registered for the test: exit codes, JSON rows, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from robustbench_iqa.cli import main
from robustbench_iqa.data.base import IQADataset, IQASample
from robustbench_iqa.data.images import save_image
from robustbench_iqa.data.registry import DATASETS
from robustbench_iqa.models.registry import MODELS
from tests.toy_models import ToyFR, ToyNR, random_images


@pytest.fixture(scope="module")
def toy_registry(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("toyds")
    samples = []
    imgs = random_images(20, 24, 24, seed=7)
    ref = random_images(1, 24, 24, seed=8)[0]
    save_image(ref, root / "ref.png")
    for i in range(20):
        p = root / f"img{i:02d}.png"
        save_image(imgs[i], p)
        samples.append(IQASample(f"img{i:02d}", p, float(imgs[i].mean()), root / "ref.png", f"g{i % 10}"))
    ds = IQADataset("cli-toy", tuple(samples), size=(24, 24))
    with DATASETS.override("cli-toy", lambda **_: ds), \
            MODELS.override("cli-toy-nr", lambda **_: _named(ToyNR(), "cli-toy-nr")), \
            MODELS.override("cli-toy-fr", lambda **_: _named(ToyFR(), "cli-toy-fr")):
        yield root


def _named(m, name):  # type: ignore[no-untyped-def]
    m.name = name
    return m


def _json_rows(out: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.mark.parametrize("mode", ["nr", "fr"])
def test_train_then_certify_and_predict(toy_registry: Path, tmp_path: Path, capsys, mode: str) -> None:  # type: ignore[no-untyped-def]
    model = f"cli-toy-{mode}"
    rc = main(["train", "--model", model, "--dataset", "cli-toy", "--sigma", "0.25", "--epochs", "5",
               "--n-eval", "51", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    rep = _json_rows(capsys.readouterr().out)[-1]
    ckpt = tmp_path / f"fs-iqa-{model}-sigma0.25.safetensors"
    assert Path(rep["checkpoint"]) == ckpt and ckpt.is_file()
    rc = main(["certify", "--model", model, "--dataset", "cli-toy", "--split", "all", "--limit", "3",
               "--n", "100", "--alpha", "0.99", "--checkpoint", str(ckpt), "--json", "--no-progress"])
    assert rc == 0
    rows = _json_rows(capsys.readouterr().out)
    assert len(rows) == 3
    for r in rows:
        assert {"image", "score", "lower", "upper", "eps_x", "spectral_norm", "abstained"} <= set(r)
        if not r["abstained"]:
            assert r["lower"] <= r["score"] <= r["upper"]
            assert r["eps_x"] == pytest.approx(0.25 / r["spectral_norm"])
    rc = main(["predict", "--model", model, "--dataset", "cli-toy", "--split", "all", "--limit", "2",
               "--n", "101", "--checkpoint", str(ckpt), "--no-progress"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "img00" in table and "score" in table.splitlines()[0]


def test_image_files_and_errors(toy_registry: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    img = toy_registry / "img00.png"
    assert main(["predict", "--model", "cli-toy-nr", "--defense", "none", "--image", str(img), "--json"]) == 0
    row = _json_rows(capsys.readouterr().out)[0]
    assert row["image"] == str(img) and isinstance(row["score"], float)
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG garbage")
    cases = [
        (["predict", "--model", "cli-toy-nr", "--defense", "none", "--image", str(bad)], "cannot read image"),
        (["predict", "--model", "cli-toy-nr", "--defense", "none", "--image", str(tmp_path / "no.png")], "not found"),
        (["predict", "--model", "cli-toy-fr", "--defense", "none", "--image", str(img)], "--ref"),
        (["certify", "--model", "cli-toy-nr", "--image", str(img), "--sigma", "-1"], "sigma"),
        (["certify", "--model", "cli-toy-nr", "--image", str(img), "--alpha", "2"], "alpha"),
        (["certify", "--model", "cli-toy-nr", "--dataset", "cli-toy", "--n", "5", "--limit", "1"], "need n >= 44"),
        (["certify", "--model", "unknown-model", "--dataset", "cli-toy"], "unknown model"),
        (["certify", "--model", "cli-toy-nr", "--dataset", "cli-toy", "--limit", "0"], "--limit"),
        (["certify", "--model", "cli-toy-nr"], "no input"),
    ]
    for argv, msg in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err
        assert any(line.startswith("error: ") for line in err.splitlines()), err
        if msg:
            assert msg in err, (argv, err)


def test_fr_pair_size_mismatch(toy_registry: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    small = tmp_path / "small.png"
    save_image(torch.rand(3, 16, 16), small)
    rc = main(["predict", "--model", "cli-toy-fr", "--defense", "none", "--image",
               str(toy_registry / "img00.png"), "--ref", str(small), "--resize", "none"])
    assert rc == 2
    assert "different sizes" in capsys.readouterr().err


def test_certify_out_writes_the_store_and_resumes_to_the_same_rows(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    from robustbench_iqa.store import RESULTS_FILE, ResultsStore

    args = ["certify", "--model", "default-nr", "--dataset", "default", "--limit", "4", "--n", "500",
            "--json", "--no-progress"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*args, "--out", str(a)]) == 0
    printed = _json_rows(capsys.readouterr().out)
    assert main([*args, "--out", str(b)]) == 0
    capsys.readouterr()
    con = sqlite3.connect(b / RESULTS_FILE)  # as if the run had been killed after two images
    with con:
        con.execute("DELETE FROM rows WHERE image IN (SELECT image FROM rows WHERE tbl='guarantee' "
                    "ORDER BY id DESC LIMIT 2)")
    con.close()
    assert main([*args, "--out", str(b)]) == 2  # an existing run needs --resume
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--out", str(b), "--resume"]) == 0
    out = capsys.readouterr()
    resumed = _json_rows(out.out)
    assert len(resumed) == 4 and "2 image(s) were already" in out.err  # 2 from the store, 2 new
    by_image = {r["image"]: r for r in printed}
    for r in resumed:
        assert r["lower"] == pytest.approx(by_image[r["image"]]["lower"], abs=0)

    def rows(run: Path) -> list[tuple[str, str, float | None, float | None]]:
        with ResultsStore.open(run) as st:
            g = st.frame("guarantee")
            assert st.count("correlation") == 4
        return sorted(zip(g["image"], g["reason"].astype(str), g["lower"], g["upper"]))

    assert rows(a) == rows(b)
    assert sorted(r["image"] for r in printed) == sorted(r[0].split("#")[0] for r in rows(a))
    assert main(["certify", "--model", "default-nr", "--dataset", "default", "--resume"]) == 2
    assert "--out" in capsys.readouterr().err


def test_the_same_image_with_two_references_is_two_inputs(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """Rows are keyed by content: a distorted image paired with a second reference is a new input,
    not one 'already done' (its score differs)."""
    from robustbench_iqa.store import ResultsStore

    imgs = random_images(3, 32, 32, seed=11)
    for name, img in zip(("dist.png", "ref1.png", "ref2.png"), imgs):
        save_image(img, tmp_path / name)
    (tmp_path / "list.csv").write_text("image,score,ref\ndist.png,1.0,ref1.png\ndist.png,2.0,ref2.png\n")
    args = ["certify", "--model", "default-fr", "--dataset", "csv", "--root", str(tmp_path), "--split", "all",
            "--size", "32x32", "--n", "200", "--json", "--no-progress", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    out = capsys.readouterr()
    printed = _json_rows(out.out)
    assert "already" not in out.err and len(printed) == 2
    assert printed[0]["score"] != printed[1]["score"]
    with ResultsStore.open(tmp_path / "run") as st:
        g = st.frame("guarantee")
    assert len(g) == 2 and g["image"].nunique() == 2 and set(g["image"].str.split("#").str[0]) == {"dist.png"}
