"""The library's own input checks: dtypes, numpy scalars, devices, budgets, weights files, faulty
output folders, configs, and the determinism record of a run."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from robustbench_iqa.attacks.objective import Objective
from robustbench_iqa.certify.bounds import min_samples, order_statistic_indices, require_indices
from robustbench_iqa.certify.defense import create_defense
from robustbench_iqa.errors import InputError, ReproducibilityWarning
from robustbench_iqa.models.embedded import load_weights
from robustbench_iqa.models.registry import create_model
from robustbench_iqa.provenance import run_config, runtime_settings
from robustbench_iqa.runner.config import load_config
from robustbench_iqa.store import ResultsStore, RowKey
from robustbench_iqa.validation import (
    MAX_SAMPLES,
    check_alpha,
    check_budget,
    check_device,
    check_images,
    check_n,
    check_sigma,
)
from tests.fs_faults import full_dir, readonly_dir
from tests.toy_models import random_images

CUDA = torch.cuda.is_available()
MPS = torch.backends.mps.is_available()


# -- image dtypes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_float_dtypes_are_converted_to_float32(dtype: torch.dtype) -> None:
    model = create_model("default-nr")
    x = random_images(2, 32, 32, seed=3).to(dtype)
    ref32 = x.float()  # the same values (float16/bfloat16 are exact in float32)
    with torch.no_grad():
        got = model(*model.check_inputs(x, None))
        want = model(ref32)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    fs = create_defense("fs-iqa", model, sigma=0.25)
    a = fs.predict(x, None, n=64, generator=torch.Generator().manual_seed(1))
    b = fs.predict(ref32, None, n=64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert check_images(x).dtype == torch.float32


def test_integer_images_are_refused() -> None:
    with pytest.raises(InputError, match=r"floating-point .* got dtype torch.uint8 \(divide 8-bit images by 255\)"):
        check_images(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


# -- numpy scalars ---------------------------------------------------------------------------------------
def test_numpy_scalars_are_accepted() -> None:
    assert check_n(np.int64(500)) == 500 and type(check_n(np.int32(7))) is int
    assert check_alpha(np.float32(0.875)) == 0.875 and check_sigma(np.float64(0.25)) == 0.25
    py = order_statistic_indices(1000, sigma=0.25, eps=0.125, alpha=0.875)
    assert order_statistic_indices(np.int64(1000), sigma=np.float32(0.25), eps=np.float32(0.125),
                                   alpha=np.float32(0.875)) == py is not None
    fs = create_defense("fs-iqa", create_model("default-nr"), sigma=0.25)
    x = random_images(1, 24, 24, seed=4)
    a = fs.certify(x, None, n=np.int64(200), alpha=np.float64(0.99), generator=torch.Generator().manual_seed(0))
    b = fs.certify(x, None, n=200, alpha=0.99, generator=torch.Generator().manual_seed(0))
    assert a[0].to_dict() == b[0].to_dict()


@pytest.mark.parametrize("bad", [0, -3, 2.0, True, np.float64(5.0), MAX_SAMPLES + 1, 10**30])
def test_bad_sample_counts(bad: object) -> None:
    with pytest.raises(InputError, match="n must be"):
        check_n(bad)  # type: ignore[arg-type]


def test_min_samples_beyond_the_cap_is_the_closed_form() -> None:
    n = min_samples(sigma=0.25, eps=1.5, alpha=0.999)  # p_lo = Phi(-6): about 1e9 draws
    assert n > MAX_SAMPLES
    with pytest.raises(InputError, match=f"need n >= {n}"):
        require_indices(2000, sigma=0.25, eps=1.5, alpha=0.999)


# -- devices ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device, match", [
    ("gpu0", "unknown device 'gpu0'"),
    ("meta", "device 'meta' is not supported"),
    pytest.param("cuda", "CUDA is not available", marks=pytest.mark.skipif(CUDA, reason="a GPU is present")),
    pytest.param("cuda:0", "CUDA is not available", marks=pytest.mark.skipif(CUDA, reason="a GPU is present")),
    pytest.param("mps", "MPS is not available", marks=pytest.mark.skipif(MPS, reason="MPS is present")),
])
def test_devices_this_machine_lacks(device: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        check_device(device)
    with pytest.raises(InputError, match=match):
        create_model("default-nr", device=device)
    assert check_device("cpu") == torch.device("cpu")


# -- attack settings -------------------------------------------------------------------------------------
def test_non_finite_target_score_is_refused() -> None:
    model = create_model("default-nr")
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(InputError, match="target_score must be a finite number"):
            Objective.from_model(model, target="toward", target_score=bad)
    assert Objective.from_model(model, target="toward", target_score=np.float32(0.5)).target_score == 0.5


def test_budget_limits_per_norm() -> None:
    assert check_budget(1.0, "linf") == 1.0 and check_budget(4 / 255, "linf") == 4 / 255
    with pytest.raises(InputError, match=r"eps=5 is beyond the Linf range .*\(at most 1"):
        check_budget(5, "linf")
    assert check_budget(5, "l2") == 5  # the image size is not known yet
    assert check_budget(math.sqrt(3 * 8 * 8), "l2", hw=(8, 8)) == pytest.approx(math.sqrt(192))
    with pytest.raises(InputError, match=r"beyond the L2 diameter sqrt\(3HW\) = 13.86 of 8x8 images"):
        check_budget(14, "l2", hw=(8, 8))
    for bad in (math.nan, -0.1):
        with pytest.raises(InputError, match="eps"):
            check_budget(bad, "linf")


# -- weights files ---------------------------------------------------------------------------------------
def test_weights_file_messages(tmp_path: Path) -> None:
    model = create_model("default-nr")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(InputError, match=r"w\.pt is not a safetensors file \(a zip archive, e\.g\. a PyTorch "
                                         r"\.pt/\.pth checkpoint\); default-nr loads safetensors"):
        load_weights(model, tmp_path / "w.pt")
    torch.save(state, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(InputError, match=r"not a safetensors file \(a Python pickle"):
        load_weights(model, tmp_path / "old.pt")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match=r"not a safetensors file \(an empty file\)"):
        load_weights(model, tmp_path / "empty.safetensors")
    with pytest.raises(InputError, match="is a directory"):
        load_weights(model, tmp_path)
    keys = sorted(state)
    wrong = {("extra." + k if i < 2 else k): v for i, (k, v) in enumerate(sorted(state.items()))}
    save_file(wrong, str(tmp_path / "keys.safetensors"))
    with pytest.raises(InputError) as e:
        load_weights(model, tmp_path / "keys.safetensors")
    msg = str(e.value)
    assert "2 missing key(s)" in msg and keys[0] in msg and keys[1] in msg
    assert "2 unexpected key(s)" in msg and f"extra.{keys[0]}" in msg
    shaped = dict(state)
    k0 = next(k for k, v in state.items() if v.dim() >= 2)
    shaped[k0] = torch.zeros(3, 3)
    save_file(shaped, str(tmp_path / "shape.safetensors"))
    with pytest.raises(InputError, match=rf"1 shape mismatch\(es\): {k0} \(3, 3\) \(expected"):
        load_weights(model, tmp_path / "shape.safetensors")


# -- output folders --------------------------------------------------------------------------------------
CONFIG = {"kind": "test", "model": "m"}


def test_store_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match=r"cannot create run dir .*f/run: Not a directory"):
        ResultsStore.open(tmp_path / "f" / "run", CONFIG)


def test_store_on_a_read_only_folder(tmp_path: Path) -> None:
    with readonly_dir(tmp_path) as ro:
        with pytest.raises(InputError, match=r"cannot create run dir .*readonly/run: (Read-only file system|Permission denied)"):
            ResultsStore.open(ro / "run", CONFIG)
        with pytest.raises(InputError, match=r"cannot write in run dir .*readonly: (Read-only|Permission)"):
            ResultsStore.open(ro, CONFIG)
        assert os.listdir(ro) == []


def test_store_on_a_full_disk(tmp_path: Path) -> None:
    with full_dir(tmp_path) as full:
        with pytest.raises(InputError, match=r"results store .*full/run/results.sqlite: the disk is full \(database or disk is full\)"):
            ResultsStore.open(full / "run", CONFIG)
        assert sorted(os.listdir(full)) == ["filler"]  # nothing half-created is left behind


def test_disk_full_during_a_run_keeps_the_rows_so_far(tmp_path: Path) -> None:
    with full_dir(tmp_path) as disk:
        (disk / "filler").unlink()
        with ResultsStore.open(disk / "run", CONFIG) as store:
            assert store.put(RowKey("s", "m", image="a"), {"v": 1})
            with (disk / "filler").open("wb") as f, pytest.raises(OSError):
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            with pytest.raises(InputError, match=r"cannot write results store .*: the disk is full \(database or disk is full\); "
                                                 r"the rows written so far are kept"):
                store.put(RowKey("s", "m", image="b"), {"v": "x" * 200_000})
        (disk / "filler").unlink()
        with ResultsStore.open(disk / "run") as store:
            assert [r["image"] for r in store.iter_rows()] == ["a"]


# -- verify configs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("content, match", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a UTF-8 text"),
    (b"[tool\nx = ", "cannot parse"),
    (b"tool = 5\n", r"has no \[tool.robustbench_iqa.verify\] table"),
    (b"[tool]\nrobustbench_iqa = 5\n", r"has no \[tool.robustbench_iqa.verify\] table"),
    (b"[tool.robustbench_iqa]\nverify = 5\n", "must be a table"),
    (b"[tool.robustbench_iqa.verify]\ndevice = \"meta\"\n", "device 'meta' is not supported"),
    (b"[tool.robustbench_iqa.verify]\ndevice = \"gpu0\"\n", "unknown device 'gpu0'"),
    (b"[tool.robustbench_iqa.verify]\nseed = -1\n", r"seed must lie in \[0, 2\^63\)"),
    (b"[tool.robustbench_iqa.verify]\nn = 100000000\n", "n must be at most"),
    (b"[tool.robustbench_iqa.verify]\nsize = \"1000000x1000000\"\n", "needs about"),
])
def test_bad_config_files(tmp_path: Path, content: bytes, match: str) -> None:
    p = tmp_path / "pyproject.toml"
    p.write_bytes(content)
    with pytest.raises(InputError, match=match):
        load_config(p)


def test_config_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a directory"):
        load_config(tmp_path)


# -- determinism record ----------------------------------------------------------------------------------
def test_runtime_settings_are_recorded_and_compared_with_a_warning(tmp_path: Path) -> None:
    cfg = run_config(model="m")
    assert cfg["runtime"] == {"torch_threads": torch.get_num_threads(),
                              "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}
    assert runtime_settings() == cfg["runtime"]
    ResultsStore.open(tmp_path, cfg).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ResultsStore.open(tmp_path, run_config(model="m"), resume=True).close()  # same settings: silent
    other = {**cfg, "runtime": {**cfg["runtime"], "torch_threads": cfg["runtime"]["torch_threads"] + 3}}
    with pytest.warns(ReproducibilityWarning, match=r"torch_threads \d+ -> \d+.*to a tolerance"):
        ResultsStore.open(tmp_path, other, resume=True).close()  # allowed: a warning, not an error
    with pytest.raises(InputError, match="differs in: model"):
        ResultsStore.open(tmp_path, {**other, "model": "n"}, resume=True)


def test_cli_resume_under_other_threads_warns_in_one_line(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    from robustbench_iqa.cli import main

    Image.fromarray((random_images(1, 16, 16, seed=2)[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(
        tmp_path / "a.png")
    argv = ["certify", "--model", "default-nr", "--image", str(tmp_path / "a.png"), "--n", "100", "--alpha", "0.9",
            "--no-progress", "--json", "--out", str(tmp_path / "run")]
    threads = torch.get_num_threads()
    try:
        assert main([*argv, "--threads", "1"]) == 0
        first = capsys.readouterr().out
        assert main([*argv, "--threads", "2", "--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    threads = 1
    out, err = capsys.readouterr()
    a, b = json.loads(first), json.loads(out)  # the resumed row is shown from the store
    assert [a[k] for k in ("score", "lower", "upper", "eps_x")] == [b[k] for k in ("score", "lower", "upper", "eps_x")]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0].startswith(f"warning: resuming {tmp_path / 'run'}") and f"{threads} -> {threads + 1}" in lines[0]


def test_cli_fr_reference_resized_only_when_asked_and_recorded(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    from robustbench_iqa.cli import main

    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((32, 48, 3)) * 255).astype(np.uint8)).save(tmp_path / "x.png")
    Image.fromarray((rng.random((16, 24, 3)) * 255).astype(np.uint8)).save(tmp_path / "ref.png")
    argv = ["certify", "--model", "default-fr", "--image", str(tmp_path / "x.png"), "--ref", str(tmp_path / "ref.png"),
            "--n", "100", "--alpha", "0.9", "--no-progress", "--json"]
    assert main(argv) == 2
    assert "FR pair of different sizes" in capsys.readouterr().err
    assert main([*argv, "--resize-ref", "--max-pixels", "600", "--out", str(tmp_path / "run")]) == 0
    with ResultsStore.open(tmp_path / "run") as store:
        assert store.config["resize_ref"] is True and store.config["max_pixels"] == 600
        assert store.config["runtime"]["torch_threads"] == torch.get_num_threads()
