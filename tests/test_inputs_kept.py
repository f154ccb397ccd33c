"""Every input row is kept, and degenerate input is refused with the size that works.

* the same image listed twice (a CSV with two ratings, ``--image`` twice): two rows, said on
  stderr, and a resume finds both (not "resumed" on a fresh run);
* a CSV that names a column twice or repeats its header line: one ``error:`` line;
* ``root`` of the embedded dataset that does not exist is refused (never created), one that
  holds other files is refused (never replaced);
* images below a model's minimum size (1x1, 2x2, 1x5000, LPIPS below 31 pixels) are refused,
  naming the size that works, on the CLI, in the gate and in the Python API.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustbench_iqa.cli import main
from robustbench_iqa.errors import InputError
from robustbench_iqa.runner.plan import InputIds
from robustbench_iqa.store import ResultsStore
from robustbench_iqa.validation import MIN_SIDE, check_image_size, min_image_size

CERTIFY = ["certify", "--model", "default-nr", "--n", "64", "--alpha", "0.9", "--no-progress", "--json"]


def _png(path: Path, h: int, w: int, seed: int = 0) -> Path:
    Image.fromarray((np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


def _rows(out: Path) -> int:
    with ResultsStore.open(out) as store:
        return sum(store.count(t) for t in store.tables())


def _json_rows(text: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(ln) for ln in text.splitlines() if ln.startswith("{")]


def test_input_ids_number_repeats() -> None:
    ids = InputIds()
    assert [ids(k, n) for k, n in [("a#1", "a"), ("b#2", "b"), ("a#1", "a"), ("a#1", "a")]] == \
        ["a#1", "b#2", "a#1~2", "a#1~3"]
    assert ids.repeated == {"a": 3} and "a (3 times)" in (ids.note() or "")
    assert InputIds().note() is None


def test_the_same_image_twice_in_a_csv_is_two_rows(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    _png(tmp_path / "a.png", 16, 16)
    _png(tmp_path / "b.png", 16, 16, seed=1)
    table = tmp_path / "t.csv"
    table.write_text("image,score\na.png,0.2\nb.png,0.5\na.png,0.9\n")
    out = tmp_path / "run"
    argv = [*CERTIFY, "--dataset", "csv", "--root", str(table), "--split", "all", "--size", "16x16",
            "--out", str(out)]
    assert main(argv) == 0
    got = capsys.readouterr()
    rows = _json_rows(got.out)
    assert [r["target"] for r in rows] == [0.2, 0.5, 0.9]  # both ratings of a.png kept, in order
    assert "resumed" not in got.err and "listed more than once" in got.err and "a.png (2 times)" in got.err
    assert _rows(out) >= 3
    n = _rows(out)
    assert main([*argv, "--resume"]) == 0
    got = capsys.readouterr()
    assert "resumed: 3 image(s)" in got.err and _rows(out) == n
    assert [r["score"] for r in _json_rows(got.out)] == [r["score"] for r in rows]


def test_the_same_file_twice_on_the_command_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    img = _png(tmp_path / "a.png", 16, 16)
    out = tmp_path / "run"
    assert main([*CERTIFY, "--image", str(img), "--image", str(img), "--out", str(out)]) == 0
    got = capsys.readouterr()
    rows = _json_rows(got.out)
    assert len(rows) == 2 and "resumed" not in got.err
    # the same input, drawn with its own noise (its own key), so two honest certificates
    assert rows[0]["score"] == pytest.approx(rows[1]["score"], abs=0.2)


@pytest.mark.parametrize("text, names", [
    ("image,score,score\na.png,0.2,0.3\n", ["names column(s) ['score'] more than once"]),
    ("image,image,score\na.png,a.png,0.2\n", ["['image'] more than once"]),
    ("image,score\nimage,score\na.png,0.2\n", ["repeats its header line at data row 1"]),
    ("image,score\na.png,0.2\nimage,score\na.png,0.3\n", ["repeats its header line at data row 2"]),
])
def test_csv_header_twice(tmp_path: Path, capsys, text: str, names: list[str]) -> None:  # type: ignore[no-untyped-def]
    _png(tmp_path / "a.png", 16, 16)
    table = tmp_path / "t.csv"
    table.write_text(text)
    rc = main([*CERTIFY, "--dataset", "csv", "--root", str(table), "--split", "all"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for n in names:
        assert n in lines[0]


def test_embedded_root_is_never_created_nor_replaced(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from robustbench_iqa.data.registry import create_dataset

    missing = tmp_path / "nonexistent" / "deeper"
    with pytest.raises(InputError, match="does not exist"):
        create_dataset("default", root=str(missing))
    assert not missing.exists() and not missing.parent.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(InputError, match="holds other files"):
        create_dataset("default", root=str(mine))
    assert (mine / "thesis.tex").read_text() == "years of work"
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        create_dataset("default", root=str(afile))
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text(f'[tool.robustbench_iqa.verify]\nroot = "{missing}"\n')
    rc = main(["verify", "--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "does not exist" in err and not missing.exists()


# ------------------------------------------------------------------------- degenerate sizes
@pytest.mark.parametrize("h, w", [(1, 1), (2, 2), (1, 5000), (5000, 1), (MIN_SIDE - 1, 64), (64, MIN_SIDE - 1)])
def test_degenerate_images_are_refused_on_the_cli(tmp_path: Path, capsys, h: int, w: int) -> None:  # type: ignore[no-untyped-def]
    img = _png(tmp_path / "tiny.png", h, w)
    for argv in ([*CERTIFY, "--image", str(img), "--out", str(tmp_path / "run")],
                 ["predict", "--model", "default-nr", "--defense", "none", "--image", str(img), "--no-progress"]):
        rc = main(argv)
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc == 2 and len(lines) == 1, err
        assert f"tiny.png is {h}x{w} (HxW)" in lines[0] and f"at least {MIN_SIDE}x{MIN_SIDE}" in lines[0]
    assert not (tmp_path / "run" / "results.sqlite").exists()


def test_the_smallest_accepted_size_is_scored(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    img = _png(tmp_path / "edge.png", MIN_SIDE, MIN_SIDE)
    assert main([*CERTIFY, "--image", str(img)]) == 0


def test_minimum_sizes_per_model() -> None:
    class Net:
        net_min_size = (31, 31)

    fixed = Net()
    fixed.input_size = (384, 512)  # type: ignore[attr-defined]
    assert min_image_size(object()) == (MIN_SIDE, MIN_SIDE)
    assert min_image_size(Net()) == (31, 31)
    assert min_image_size(fixed) == (MIN_SIDE, MIN_SIDE)  # resized to 384x512 before its network
    check_image_size((31, 31), minimum=(31, 31))
    with pytest.raises(InputError, match=r"x is 30x200 \(HxW\).*'lpips'.*at least 31x31"):
        check_image_size(torch.Size([1, 3, 30, 200]), minimum=(31, 31), what="x", model="lpips")


@pytest.mark.parametrize("name, side", [("lpips", 31), ("dbcnn", 16)])
def test_published_networks_refuse_below_what_they_take(name: str, side: int) -> None:
    """Below ``side`` pixels pyiqa's network raises a RuntimeError; at ``side`` it scores."""
    from robustbench_iqa.models.registry import create_model

    model = create_model(name, weights="random")
    x = torch.rand(1, 3, side, side + 3)
    args = (x, x.clone()) if model.full_reference else (x,)
    with torch.no_grad():
        assert torch.isfinite(model(*args)).all()
        small = torch.rand(1, 3, side - 1, side + 3)
        with pytest.raises(InputError, match=f"at least {side}x{side}"):
            model(*((small, small.clone()) if model.full_reference else (small,)))
        model.net_min_size = (1, 1)  # without the check, the network itself really fails there
        with pytest.raises(RuntimeError):
            model(*((small, small.clone()) if model.full_reference else (small,)))


def test_verify_refuses_a_dataset_below_the_minimum(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    _png(tmp_path / "ok.png", 16, 16)
    _png(tmp_path / "tiny.png", 4, 300)
    (tmp_path / "t.csv").write_text("image,score\nok.png,0.5\ntiny.png,0.4\n")
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text(f'[tool.robustbench_iqa.verify]\ndataset = "csv"\nroot = "{tmp_path / "t.csv"}"\n'
                   f'size = "native"\nmodels = ["default-nr"]\nsplit = "all"\n')
    rc = main(["verify", "--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "tiny.png is 4x300 (HxW)" in err, err
    assert not (tmp_path / "run" / "results.sqlite").exists()
