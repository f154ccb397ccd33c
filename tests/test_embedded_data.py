"""The embedded ``default`` dataset: distortions, weak labels, build, cache and split."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.metrics import structural_similarity

from robustbench_iqa.data import embedded
from robustbench_iqa.data.distortions import DISTORTIONS, LEVELS, apply_distortion, to_uint8
from robustbench_iqa.data.registry import create_dataset, list_datasets
from robustbench_iqa.data.weak_labels import gmsd, psnr, ssim, weak_label
from robustbench_iqa.errors import InputError


def _ref_image() -> np.ndarray:
    return embedded.reference_crops()["astronaut-0"] / 255.0


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One dataset build, in a temporary $RBIQA_CACHE, shared by this module."""
    base = tmp_path_factory.mktemp("rbiqa-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RBIQA_CACHE", str(base))
        ds = create_dataset("default")
    assert ds.root == base / embedded.VERSION
    return base


@pytest.fixture()
def env_cache(built: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RBIQA_CACHE", str(built))
    return built / embedded.VERSION


# --- distortions -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DISTORTIONS))
def test_distortions_keep_shape_and_range(name: str) -> None:
    ref = _ref_image()
    for level in LEVELS:
        out = apply_distortion(ref, name, level, np.random.default_rng(1))
        assert out.shape == ref.shape
        assert out.min() >= 0.0 and out.max() <= 1.0
    mild = apply_distortion(ref, name, 1, np.random.default_rng(1))
    assert not np.allclose(to_uint8(mild), to_uint8(ref)), f"{name} level 1 changed nothing"


def test_distortion_parameters_match_their_definition() -> None:
    ref = _ref_image()
    # quantization to k levels leaves at most k distinct values per channel
    q = apply_distortion(ref, "quantization", 5, None)
    assert len(np.unique(q)) <= 3
    # full desaturation gives a gray image with the Rec. 601 luma
    gray = apply_distortion(ref, "saturation", 5, None)
    np.testing.assert_allclose(gray[..., 0], ref @ np.array([0.299, 0.587, 0.114]), atol=1e-12)
    np.testing.assert_allclose(gray[..., 0], gray[..., 2], atol=1e-12)
    # contrast scales deviations from the mean by c (no clipping occurs when c < 1)
    c = apply_distortion(ref, "contrast", 3, None)
    np.testing.assert_allclose(c - c.mean(), 0.5 * (ref - ref.mean()), atol=1e-12)
    # noise is reproducible from the generator and has the stated std
    n1 = apply_distortion(np.full((64, 64, 3), 0.5), "gaussian-noise", 3, np.random.default_rng(7))
    n2 = apply_distortion(np.full((64, 64, 3), 0.5), "gaussian-noise", 3, np.random.default_rng(7))
    np.testing.assert_array_equal(n1, n2)
    assert abs(n1.std() - 0.07) < 0.005


def test_distortion_bad_input() -> None:
    ref = _ref_image()
    with pytest.raises(InputError, match="level"):
        apply_distortion(ref, "jpeg", 6)
    with pytest.raises(InputError, match="unknown distortion"):
        apply_distortion(ref, "sepia", 1)
    with pytest.raises(InputError, match=r"\(H, W, 3\)"):
        apply_distortion(ref[..., 0], "jpeg", 1)


# --- weak labels -------------------------------------------------------------------------------


def test_weak_label_metrics_against_references() -> None:
    pytest.importorskip("pyiqa")
    from pyiqa.archs.gmsd_arch import gmsd as pyiqa_gmsd

    ref = _ref_image()
    for name in ("gaussian-noise", "gaussian-blur", "jpeg", "contrast"):
        img = to_uint8(apply_distortion(ref, name, 3, np.random.default_rng(0))) / 255.0
        mse = np.mean((img - ref) ** 2)
        assert psnr(img, ref) == pytest.approx(10.0 * math.log10(1.0 / mse), rel=1e-9)
        want_ssim = np.mean([structural_similarity(ref[..., c], img[..., c], data_range=1.0,
                                                   gaussian_weights=True, sigma=1.5,
                                                   use_sample_covariance=False) for c in range(3)])
        assert ssim(img, ref) == pytest.approx(want_ssim, abs=1e-9)
        t = lambda a: torch.tensor(a).permute(2, 0, 1)[None]  # noqa: E731
        want_gmsd = pyiqa_gmsd(t(img), t(ref)).item()  # pyiqa rounds luma to 8 bits: small gap
        assert gmsd(img, ref) == pytest.approx(want_gmsd, abs=2e-3)


def test_weak_label_identity_and_range() -> None:
    ref = _ref_image()
    same = weak_label(ref, ref)
    assert same.psnr == math.inf and same.ssim == pytest.approx(1.0) and same.gmsd == pytest.approx(0.0)
    assert same.score == pytest.approx(1.0)
    worst = weak_label(np.zeros_like(ref), np.ones_like(ref))
    assert 0.0 <= worst.score < 0.05
    with pytest.raises(InputError, match="equal shape"):
        weak_label(ref, ref[:50])


# --- the built dataset --------------------------------------------------------------------------


def test_dataset_contents(env_cache: Path) -> None:
    assert "default" in list_datasets()
    ds = create_dataset("default")
    assert len(ds) == len(embedded.SOURCES) * 4 * len(DISTORTIONS) * len(LEVELS)
    scores = np.array([s.score for s in ds])
    assert scores.min() >= 0.0 and scores.max() <= 1.0 and scores.std() > 0.1
    assert ds.has_references and all(s.group for s in ds)
    assert ds.higher_better and ds.score_range == (0.0, 1.0)
    assert "weak label" in ds.extra["labels"] and "not human" in ds.extra["labels"]
    x, ref = ds.load(0)
    assert x.shape == ref.shape == (3, *embedded.CROP)
    x_small, _ = create_dataset("default", size=(48, 64)).load(0)
    assert x_small.shape == (3, 48, 64)


def test_index_scores_match_the_saved_images(env_cache: Path) -> None:
    ds = create_dataset("default")
    for i in (0, 7, 301, len(ds) - 1):
        s = ds.samples[i]
        img = np.asarray(Image.open(s.image).convert("RGB")) / 255.0
        ref = np.asarray(Image.open(s.ref).convert("RGB")) / 255.0
        assert weak_label(img, ref).score == pytest.approx(s.score, abs=2e-6)


def test_labels_fall_with_distortion_level(env_cache: Path) -> None:
    rows = embedded.read_index(env_cache)
    assert rows is not None
    table: dict[tuple[str, str], dict[int, float]] = {}
    for r in rows:
        table.setdefault((r["group"], r["distortion"]), {})[int(r["level"])] = float(r["score"])
    for name in DISTORTIONS:
        curves = [np.array([lv[k] for k in LEVELS]) for (g, d), lv in table.items() if d == name]
        monotone = np.mean([np.all(np.diff(c) < 0) for c in curves])
        assert monotone >= 0.9, f"{name}: only {monotone:.0%} of references fall monotonically"
        assert np.all(np.diff(np.mean(curves, axis=0)) < 0), f"{name}: mean label not decreasing"


def test_split_keeps_references_apart(env_cache: Path) -> None:
    ds = create_dataset("default")
    train, test = ds.split(seed=0)
    g_train, g_test = {s.group for s in train}, {s.group for s in test}
    assert not g_train & g_test
    assert g_train | g_test == {s.group for s in ds}
    assert len(train) + len(test) == len(ds)
    assert 0.75 <= len(train) / len(ds) <= 0.85


def test_cache_is_reused(env_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = os.stat(env_cache / "index.csv").st_mtime_ns

    def no_build(*a: object, **k: object) -> None:
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(embedded, "_build_into", no_build)
    ds = create_dataset("default")
    assert ds.root == env_cache and os.stat(env_cache / "index.csv").st_mtime_ns == before


def test_build_is_deterministic_and_rebuilds_without_index(env_cache: Path, tmp_path: Path) -> None:
    first = create_dataset("default")
    copy = tmp_path / "copy"
    shutil.copytree(env_cache, copy)
    (copy / "index.csv").unlink()
    assert embedded.read_index(copy) is None
    noisy = next(s for s in first if "gaussian-noise" in s.name)
    (copy / "dist" / noisy.image.name).unlink()
    rebuilt = embedded.embedded_dataset(root=copy, progress=False)  # a second, independent build
    assert [s.name for s in rebuilt] == [s.name for s in first]
    assert [s.score for s in rebuilt] == [s.score for s in first]
    assert (copy / "dist" / noisy.image.name).read_bytes() == noisy.image.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no temporary folders left


def test_corrupt_index_is_detected(env_cache: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(env_cache, copy, ignore=shutil.ignore_patterns("*.png"))
    assert embedded.read_index(copy) is None  # images missing
    shutil.rmtree(copy)
    shutil.copytree(env_cache, copy)
    assert embedded.read_index(copy) is not None
    index = copy / "index.csv"
    text = index.read_text()
    index.write_text(text[:500])  # truncated
    assert embedded.read_index(copy) is None
    index.write_text(text.replace(",", ";"))  # wrong format
    assert embedded.read_index(copy) is None
    index.write_text(text)
    (copy / "meta.json").write_text("{not json")
    assert embedded.read_index(copy) is None


def test_interrupted_build_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_save = embedded._save_png

    def failing_save(arr: np.ndarray, path: Path) -> None:
        calls["n"] += 1
        if calls["n"] > 20:
            raise KeyboardInterrupt
        real_save(arr, path)

    monkeypatch.setattr(embedded, "_save_png", failing_save)
    with pytest.raises(KeyboardInterrupt):
        embedded.ensure_built(tmp_path / "cache" / embedded.VERSION, progress=False)
    assert list((tmp_path / "cache").iterdir()) == []
