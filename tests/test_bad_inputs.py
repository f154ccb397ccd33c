"""A corpus of bad inputs for the command line, generated here.

For every case: exit code 2, no traceback, exactly one line on stderr that starts
with ``error:`` and names the problem (the flag or the file), and no half-written
run in ``--out``.  The CLI runs in-process (``robustbench_iqa.cli.main``); a few
cases run the real entry point in a subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from robustbench_iqa.cli import main
from robustbench_iqa.store import RESULTS_FILE
from tests.fs_faults import full_dir, readonly_dir
from tests.test_image_decoding import _png_header_only

CUDA = torch.cuda.is_available()
MPS = torch.backends.mps.is_available()
HUGE = "100000000000000000000"  # 1e20: beyond any count, and beyond int64

Files = dict[str, Path]


@pytest.fixture(scope="module")
def f(tmp_path_factory: pytest.TempPathFactory) -> Files:
    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    good = d / "good.png"
    Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(good)
    Image.fromarray((rng.random((8, 12, 3)) * 255).astype(np.uint8)).save(d / "small.png")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 200, dtype=np.uint8)))
    (d / "trunc.png").write_bytes(good.read_bytes()[:60])
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("this is not an image\n")
    (d / "folder.png").mkdir()
    _png_header_only(d / "bomb.png", 40_000, 40_000)
    Image.fromarray(rng.random((16, 16)).astype(np.float32) * 3, "F").save(d / "float_hi.tif")
    nan = rng.random((16, 16)).astype(np.float32)
    nan[3, 3] = np.nan
    Image.fromarray(nan, "F").save(d / "float_nan.tif")
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(d / "neg16.tif", (rng.random((16, 16)) * 2000 - 1000).astype(np.int16))
    from robustbench_iqa.models.registry import create_model

    state = create_model("default-nr").state_dict()
    torch.save(state, d / "w.pt")
    save_file({"x." + k: v.contiguous() for k, v in state.items()}, str(d / "keys.safetensors"))
    (d / "empty.safetensors").write_bytes(b"")
    (d / "notes.safetensors").write_text("weights: none\n")
    (d / "afile").write_text("a file, not a folder\n")
    for name, (h, w) in {"px1.png": (1, 1), "px2.png": (2, 2), "strip.png": (1, 5000), "col.png": (5000, 1),
                         "px7.png": (7, 64)}.items():
        Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8)).save(d / name)
    save_file({k: (v * 1000).to(torch.int64).contiguous() for k, v in state.items()}, str(d / "int64.safetensors"))
    torch.save(state, d / "torch.safetensors")
    (d / "ckdir").mkdir()
    verify = "[tool.robustbench_iqa.verify]\n"
    configs = {
        "binary": b"\x00\x01\x02\xff\xfe\x89PNG",
        "malformed": b"[tool.robustbench_iqa.verify\nn = ",
        "tool5": b"tool = 5\n",
        "verify5": b"[tool.robustbench_iqa]\nverify = 5\n",
        "unknown": (verify + "sigmas = 0.25\n").encode(),
        "wrongtype": (verify + 'n = "many"\n').encode(),
        "n0": (verify + "n = 0\n").encode(),
        "alphanan": (verify + "alpha = nan\n").encode(),
        "sigmainf": (verify + "sigma = inf\n").encode(),
        "mps": (verify + 'device = "mps"\n').encode(),
        "meta": (verify + 'device = "meta"\n').encode(),
        "hugesize": (verify + 'size = "100000x100000"\n').encode(),
        "seedneg": (verify + "seed = -1\n").encode(),
    }
    for name, content in configs.items():
        (d / f"{name}.toml").write_bytes(content)
    return {p.stem if p.suffix in (".toml",) else p.name: p for p in d.iterdir()} | {"dir": d}


def expect_refusal(capsys: pytest.CaptureFixture[str], argv: list[str], names: list[str],
                   run: Path | None = None) -> str:
    """Run the CLI; assert exit 2, one `error:` line naming ``names``, no traceback, nothing in ``run``."""
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for name in names:
        assert name in lines[0], (name, lines[0])
    if run is not None:
        assert not (run / RESULTS_FILE).exists(), f"half-written run left in {run}"
        assert not run.exists() or not any(run.iterdir()), sorted(run.iterdir())
    return lines[0]


CERTIFY = ["certify", "--model", "default-nr", "--n", "100", "--alpha", "0.9", "--no-progress"]
ATTACK = ["attack", "--model", "default-nr", "--steps", "2", "--no-progress"]
PREDICT = ["predict", "--model", "default-nr", "--defense", "none", "--no-progress"]


def _image(name: str) -> Callable[[Files], list[str]]:
    return lambda f: ["--image", str(f[name])]


# (id, command, extra args from the files, names the message must contain)
FILE_CASES = [
    ("corrupt", _image("corrupt.png"), ["cannot read image", "corrupt.png"]),
    ("truncated", _image("trunc.png"), ["cannot read image", "trunc.png"]),
    ("zero-bytes", _image("empty.png"), ["cannot read image", "empty.png"]),
    ("text-as-png", _image("text.png"), ["cannot read image", "text.png"]),
    ("directory", _image("folder.png"), ["folder.png is a directory"]),
    ("missing", lambda f: ["--image", str(f["dir"] / "absent.png")], ["not found", "absent.png"]),
    ("bomb", _image("bomb.png"), ["decompression-bomb", "bomb.png"]),
    ("float-above-1", _image("float_hi.tif"), ["[0, 1]", "float_hi.tif"]),
    ("float-nan", _image("float_nan.tif"), ["NaN", "float_nan.tif"]),
    ("int16-negative", _image("neg16.tif"), ["negative", "neg16.tif"]),
    ("fr-size-mismatch", lambda f: ["--model", "default-fr", "--image", str(f["good.png"]),
                                    "--ref", str(f["small.png"])], ["different sizes", "small.png", "--resize-ref"]),
    ("huge-size", lambda f: ["--image", str(f["good.png"]), "--size", "100000x100000"], ["100000x100000", "needs about"]),
    ("max-pixels-0", lambda f: ["--image", str(f["good.png"]), "--max-pixels", "0"], ["--max-pixels"]),
    ("weights-pt", lambda f: ["--image", str(f["good.png"]), "--weights", str(f["w.pt"])],
     ["w.pt is not a safetensors file", "zip"]),
    ("weights-keys", lambda f: ["--image", str(f["good.png"]), "--weights", str(f["keys.safetensors"])],
     ["missing key(s)", "unexpected key(s)", "x."]),
    ("weights-empty", lambda f: ["--image", str(f["good.png"]), "--weights", str(f["empty.safetensors"])],
     ["empty.safetensors", "empty file"]),
    ("weights-text", lambda f: ["--image", str(f["good.png"]), "--weights", str(f["notes.safetensors"])],
     ["notes.safetensors is not a safetensors file"]),
    ("weights-dir", lambda f: ["--image", str(f["good.png"]), "--weights", str(f["dir"])], ["is a directory"]),
    # degenerate sizes: refused with the size that works
    ("1x1", _image("px1.png"), ["px1.png is 1x1 (HxW)", "at least 8x8"]),
    ("2x2", _image("px2.png"), ["px2.png is 2x2 (HxW)", "at least 8x8"]),
    ("1x5000", _image("strip.png"), ["strip.png is 1x5000 (HxW)", "at least 8x8"]),
    ("5000x1", _image("col.png"), ["col.png is 5000x1 (HxW)"]),
    ("7x64", _image("px7.png"), ["px7.png is 7x64 (HxW)"]),
    # weights of the wrong dtype, a PyTorch file where safetensors is read, a folder as checkpoint
    ("weights-int64", lambda f: ["--image", str(f["good.png"]), "--weights", str(f["int64.safetensors"])],
     ["int64.safetensors", "torch.int64 (expected torch.float32)"]),
    ("weights-torch-named-safetensors", lambda f: ["--image", str(f["good.png"]),
                                                   "--weights", str(f["torch.safetensors"])],
     ["torch.safetensors is not a safetensors file", "PyTorch"]),
    ("checkpoint-dir", lambda f: ["--image", str(f["good.png"]), "--checkpoint", str(f["ckdir"])],
     ["--checkpoint", "ckdir is a directory"]),
    ("checkpoint-torch-named-safetensors", lambda f: ["--image", str(f["good.png"]),
                                                      "--checkpoint", str(f["torch.safetensors"])],
     ["--checkpoint", "torch.safetensors is not a safetensors file", "PyTorch"]),
    ("method-bogus", lambda f: ["--image", str(f["good.png"]), "--method", "bogus"],
     ["argument --method", "invalid choice: 'bogus'", "lanczos"]),
]


@pytest.mark.parametrize("extra, names", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_bad_files(f: Files, tmp_path: Path, capsys, extra, names) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    expect_refusal(capsys, [*CERTIFY, *extra(f), "--out", str(run)], names, run=run)


NUMBER_CASES = [(cmd, flag, v) for cmd, flag, values in [
    (CERTIFY, "--n", ["nan", "inf", "-1", "0", HUGE, "2.5", "many"]),
    (CERTIFY, "--alpha", ["nan", "inf", "-0.1", "0", "1", "1.5"]),
    (CERTIFY, "--sigma", ["nan", "inf", "-0.25", "0"]),
    (CERTIFY, "--tau", ["nan", "inf", "-1"]),
    (CERTIFY, "--eps", ["nan", "-1", "0"]),
    (CERTIFY, "--seed", ["-1", HUGE, "nan", "1.5"]),
    (CERTIFY, "--limit", ["0", "-1", "nan"]),
    (CERTIFY, "--batch-size", ["0", "-1", HUGE]),
    (CERTIFY, "--max-iter", ["0"]),
    (CERTIFY, "--rtol", ["0", "nan"]),
    (PREDICT, "--batch-size", ["0", "-1"]),
    (ATTACK, "--eps", ["nan", "inf", "-1"]),
    (ATTACK, "--steps", ["0", "-1", HUGE]),
    (ATTACK, "--step-size", ["0", "nan"]),
    (ATTACK, "--eot", ["0", "-1", HUGE]),
    (ATTACK, "--confidence", ["0", "1"]),
    (ATTACK, "--target-score", ["nan", "inf"]),
] for v in values]


@pytest.mark.parametrize("cmd, flag, value", NUMBER_CASES,
                         ids=[f"{c[0]}{fl}={v if v != HUGE else 'huge'}" for c, fl, v in NUMBER_CASES])
def test_bad_numbers(f: Files, tmp_path: Path, capsys, cmd, flag, value) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    extra = ["--target", "toward"] if flag == "--target-score" else []
    extra += ["--defense", "fs-iqa"] if flag == "--eot" else []
    out = ["--out", str(run)] if cmd is not PREDICT else []
    expect_refusal(capsys, [*cmd, "--image", str(f["good.png"]), *extra, *out, f"{flag}={value}"],
                   [f"argument {flag}"], run=run)


def test_budgets_beyond_the_image_range(f: Files, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    expect_refusal(capsys, [*ATTACK, "--image", str(f["good.png"]), "--eps", "5", "--out", str(run)],
                   ["--eps=5", "Linf"], run=run)
    # L2: beyond sqrt(3 * 16 * 16) = 27.7, known once the image is loaded (after the store opened)
    expect_refusal(capsys, [*ATTACK, "--image", str(f["good.png"]), "--norm", "l2", "--eps", "30", "--out", str(run)],
                   ["--eps=30", "L2 diameter"], run=run)


def test_image_too_large_for_memory(f: Files, tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from robustbench_iqa.data import memory

    monkeypatch.setattr(memory, "available_bytes", lambda: 200_000)  # 16x16 decodes (10 KB); its work does not fit
    run = tmp_path / "run"
    msg = expect_refusal(capsys, [*CERTIFY, "--image", str(f["good.png"]), "--out", str(run)],
                         ["good.png at 16x16", "needs about", "--max-pixels"], run=run)
    assert "640 KB, but only 195 KB" in msg  # 256 pixels x 2560 bytes
    monkeypatch.setattr(memory, "available_bytes", lambda: 10**12)
    assert main([*CERTIFY, "--image", str(f["good.png"]), "--json"]) == 0


DEVICES = [
    ("gpu0", "unknown device 'gpu0'"),
    ("meta", "'meta' is not supported"),
    pytest.param("cuda", "CUDA is not available", marks=pytest.mark.skipif(CUDA, reason="a GPU is present")),
    pytest.param("cuda:7", "CUDA is not available", marks=pytest.mark.skipif(CUDA, reason="a GPU is present")),
    pytest.param("mps", "MPS is not available", marks=pytest.mark.skipif(MPS, reason="MPS is present")),
]


@pytest.mark.parametrize("device, name", DEVICES)
def test_bad_devices(f: Files, tmp_path: Path, capsys, device: str, name: str) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    expect_refusal(capsys, [*CERTIFY, "--image", str(f["good.png"]), "--device", device, "--out", str(run)],
                   ["argument --device", name], run=run)
    expect_refusal(capsys, ["verify", "--device", device, "--out", str(run), "--no-progress"],
                   ["argument --device", name], run=run)


CONFIG_CASES = [
    ("binary", ["binary.toml", "not a UTF-8"]),
    ("malformed", ["cannot parse", "malformed.toml"]),
    ("tool5", ["tool5.toml has no [tool.robustbench_iqa.verify] table"]),
    ("verify5", ["must be a table"]),
    ("unknown", ["unknown key `verify.sigmas`", "did you mean 'sigma'"]),
    ("wrongtype", ["`verify.n` must be an integer"]),
    ("n0", ["n must be >= 1"]),
    ("alphanan", ["`verify.alpha` must be a finite number"]),
    ("sigmainf", ["`verify.sigma` must be", "inf"]),
    pytest.param("mps", ["device 'mps'", "MPS is not available"], marks=pytest.mark.skipif(MPS, reason="MPS")),
    ("meta", ["device 'meta' is not supported"]),
    ("hugesize", ["100000x100000", "needs about"]),
    ("seedneg", ["seed must lie in"]),
]


@pytest.mark.parametrize("name, names", CONFIG_CASES)
def test_bad_configs(f: Files, tmp_path: Path, capsys, name: str, names: list[str]) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    expect_refusal(capsys, ["verify", "--config", str(f[name]), "--out", str(run), "--no-progress", "--no-report"],
                   names, run=run)


def test_config_paths(f: Files, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    expect_refusal(capsys, ["verify", "--config", str(f["dir"]), "--out", str(run)], ["is a directory"], run=run)
    expect_refusal(capsys, ["verify", "--config", str(tmp_path / "none.toml"), "--out", str(run)],
                   ["config file not found", "none.toml"], run=run)
    expect_refusal(capsys, ["verify", "--limit", "0", "--out", str(run)], ["argument --limit"], run=run)


def test_out_under_a_file(f: Files, capsys) -> None:  # type: ignore[no-untyped-def]
    under = f["afile"] / "run"
    expect_refusal(capsys, [*CERTIFY, "--image", str(f["good.png"]), "--out", str(under)],
                   [str(under), "Not a directory"])
    expect_refusal(capsys, ["train", "--model", "default-nr", "--epochs", "1", "--out", str(under)],
                   ["--out", "afile is a file"])
    expect_refusal(capsys, ["train-denoiser", "--model", "default-nr", "--epochs", "1", "--out", str(under)],
                   ["--out", "afile is a file"])


def test_out_read_only(f: Files, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    with readonly_dir(tmp_path) as ro:
        for argv in ([*CERTIFY, "--image", str(f["good.png"])], [*ATTACK, "--image", str(f["good.png"])]):
            expect_refusal(capsys, [*argv, "--out", str(ro / "run")], [str(ro / "run"), "cannot create run dir"])
        expect_refusal(capsys, ["train", "--model", "default-nr", "--epochs", "1", "--out", str(ro / "ckpt")],
                       ["--out", "is not writable"])
        expect_refusal(capsys, ["train-denoiser", "--model", "default-nr", "--epochs", "1",
                                "--out", str(ro / "d.safetensors")], ["--out", "is not writable"])
        assert os.listdir(ro) == []


def test_out_on_a_full_disk(f: Files, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    with full_dir(tmp_path) as full:
        expect_refusal(capsys, [*CERTIFY, "--image", str(f["good.png"]), "--out", str(full / "run")],
                       [str(full / "run"), "database or disk is full"], run=full / "run")


# -- the real entry point --------------------------------------------------------------------------------
def test_entry_point_in_subprocesses(f: Files, tmp_path: Path) -> None:
    """``python -m robustbench_iqa.cli``: refused while parsing, and after the store was opened."""
    cases = {
        "seed": (["--seed", "99999999999999999999"], "argument --seed"),
        "corrupt": (["--image", str(f["corrupt.png"])], "corrupt.png"),
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = {}
    for name, (args, _) in cases.items():
        argv = args if "--image" in args else [*args, "--image", str(f["good.png"])]
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "robustbench_iqa.cli", *CERTIFY, *argv, "--out", str(tmp_path / name)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for name, p in procs.items():
        _, err = p.communicate(timeout=180)
        lines = [line for line in err.splitlines() if line.strip()]
        assert p.returncode == 2, (name, err)
        assert len(lines) == 1 and lines[0].startswith("error: ") and cases[name][1] in lines[0], (name, err)
        run = tmp_path / name
        assert not run.exists() or not any(run.iterdir()), (name, sorted(run.iterdir()))


# -- families added with the reliability work ------------------------------------------------------------
def test_method_choices_are_the_spectral_methods() -> None:
    from certify.spectral import SpectralMethod
    from robustbench_iqa.cli._defense import SPECTRAL_METHODS

    assert sorted(SPECTRAL_METHODS) == sorted(m.value for m in SpectralMethod)


def test_run_dir_and_config_paths_of_the_wrong_kind(f: Files, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    expect_refusal(capsys, ["report", str(f["good.png"])], ["RUN_DIR", "good.png is a file"])
    expect_refusal(capsys, ["report", str(tmp_path / "absent")], ["run dir", "absent does not exist"])
    expect_refusal(capsys, ["report", str(f["dir"])], ["no results store"])
    expect_refusal(capsys, ["verify", "--config", str(f["good.png"]), "--out", str(tmp_path / "r")],
                   ["good.png", "not a UTF-8"], run=tmp_path / "r")


def test_config_with_a_byte_order_mark_is_read(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from robustbench_iqa.runner.config import load_config

    p = tmp_path / "pyproject.toml"
    p.write_bytes(b"\xef\xbb\xbf[tool.robustbench_iqa.verify]\nlimit = 3\nn = 500\n")
    cfg = load_config(p)
    assert cfg.limit == 3 and cfg.n == 500


def test_plugin_and_gate_families(tmp_path: Path, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A plugin that exits or raises, ``plugins = 3``, ``studies = []``, a model listed twice."""
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "rbiqa_corpus_exit.py").write_text("import sys\nsys.exit(0)\n")
    (tmp_path / "rbiqa_corpus_raise.py").write_text("raise OSError('disk on fire')\n")
    run = tmp_path / "run"
    for mod, name in (("rbiqa_corpus_exit", "sys.exit(0)"), ("rbiqa_corpus_raise", "OSError: disk on fire")):
        expect_refusal(capsys, ["verify", "--plugin", mod, "--out", str(run)], [mod, name], run=run)
    for body, names in (("plugins = 3", ["plugins", "3"]), ("studies = []", ["`studies` is empty"]),
                        ('models = ["default-nr", "default-nr"]', ["lists 'default-nr' twice"])):
        p = tmp_path / "pyproject.toml"
        p.write_text(f"[tool.robustbench_iqa.verify]\n{body}\n")
        expect_refusal(capsys, ["verify", "--config", str(p), "--out", str(run), "--no-progress"], names, run=run)


def test_dreamsim_zip_bomb_is_not_inflated(tmp_path: Path) -> None:
    import resource
    import zipfile

    from robustbench_iqa.errors import InputError
    from robustbench_iqa.models.dreamsim import _Release

    bomb = tmp_path / "dreamsim.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("models/dino_vitb16_pretrain.pth", b"\0" * (64 << 20))
        z.writestr("models/config.json", b"{}")
    assert bomb.stat().st_size < 1 << 20
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rel = _Release(bomb)
    with pytest.raises(InputError, match="inflates .*x .*zip bomb"):
        rel.read_bytes("models/dino_vitb16_pretrain.pth")
    assert rel.read_bytes("models/config.json") == b"{}"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 32 << 10  # KiB: nothing inflated


def test_csv_families(f: Files, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    import shutil

    shutil.copy(f["good.png"], tmp_path / "a.png")
    for text, names in (("image,score,score\na.png,1,2\n", ["['score'] more than once"]),
                        ("image,score\nimage,score\na.png,1\n", ["repeats its header line"])):
        (tmp_path / "t.csv").write_text(text)
        expect_refusal(capsys, [*CERTIFY, "--dataset", "csv", "--root", str(tmp_path / "t.csv"), "--split", "all"],
                       names)


def test_a_pytorch_file_named_safetensors_is_read_by_its_content(f: Files) -> None:
    from robustbench_iqa.models.weights import file_kind, read_state_dict

    assert file_kind(f["torch.safetensors"]).startswith("a zip archive")
    assert file_kind(f["keys.safetensors"]) == "safetensors"
    got = read_state_dict(f["torch.safetensors"])
    with open(f["w.pt"], "rb") as fh:
        want = torch.load(fh, weights_only=True)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
