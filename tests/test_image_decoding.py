"""Decoding real files by their bit depth and mode, with numpy for the expected values.

Every file is written here (Pillow, tifffile, OpenCV) from a known array; the
decoded tensor must equal that array's intensities, or the file must be refused
with a message naming it.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from robustbench_iqa.data import decode
from robustbench_iqa.data import images as img
from robustbench_iqa.data.images import Resize, load_image
from robustbench_iqa.errors import InputError

H, W = 24, 36


def _smooth(h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """A smooth RGB image in [0, 1] (JPEG keeps it within a few levels), not symmetric in any axis."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w]).reshape(2, 1, 1)
    base = np.stack([0.2 + 0.6 * xx, 0.15 + 0.7 * yy, 0.5 + 0.3 * np.sin(3 * xx + 2 * yy)], axis=-1)
    return np.clip(base + 0.01 * rng.standard_normal((h, w, 3)), 0, 1)


def _u8(a: np.ndarray) -> np.ndarray:
    return np.round(a * 255).astype(np.uint8)


def _decoded(path: Path) -> np.ndarray:
    x = load_image(path)
    assert x.dtype == torch.float32 and x.shape[0] == 3
    return x.permute(1, 2, 0).numpy()


# -- bit depth -------------------------------------------------------------------------------------------
def test_16bit_gray_png_equals_8bit_version(tmp_path: Path) -> None:
    g = _smooth()[..., 0]
    g16 = np.round(g * 65535).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    Image.fromarray(_u8(g)).save(tmp_path / "g8.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    a16, a8 = _decoded(tmp_path / "g16.png"), _decoded(tmp_path / "g8.png")
    np.testing.assert_allclose(a16, np.repeat(g16[..., None] / 65535.0, 3, axis=2), atol=1e-6)
    assert np.abs(a16 - a8).max() <= 1 / 255 + 1e-6
    assert a16.mean() < 0.9  # not "all white" (the bug: 16-bit values clipped at 255)


def test_16bit_rgb_png_full_depth(tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    a = np.round(_smooth() * 65535).astype(np.uint16)
    assert cv2.imwrite(str(tmp_path / "rgb16.png"), a[..., ::-1])
    assert Image.open(tmp_path / "rgb16.png").mode == "RGB"  # Pillow alone would give 8 bits
    np.testing.assert_allclose(_decoded(tmp_path / "rgb16.png"), a / 65535.0, atol=1e-6)
    rgba = np.dstack([a, np.full((H, W), 65535, np.uint16)])
    assert cv2.imwrite(str(tmp_path / "rgba16.png"), rgba[..., [2, 1, 0, 3]])
    np.testing.assert_allclose(_decoded(tmp_path / "rgba16.png"), a / 65535.0, atol=1e-6)


def test_tiff_integer_and_float_samples(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    g = _smooth()[..., 1]
    # Pillow-written 32-bit signed int (mode I) and float (mode F)
    i32 = np.round(g * (2**31 - 1)).astype(np.int32)
    Image.fromarray(i32, "I").save(tmp_path / "i32.tif")
    Image.fromarray(g.astype(np.float32), "F").save(tmp_path / "f32.tif")
    want = np.repeat(g[..., None], 3, axis=2)
    np.testing.assert_allclose(_decoded(tmp_path / "i32.tif"), want, atol=1e-6)
    np.testing.assert_allclose(_decoded(tmp_path / "f32.tif"), want, atol=1e-6)
    # unsigned 32-bit (Pillow alone reads it as signed: negative values), 16-bit RGB, float64, planar
    u32 = np.round(g * (2**32 - 1)).astype(np.uint32)
    tifffile.imwrite(tmp_path / "u32.tif", u32)
    np.testing.assert_allclose(_decoded(tmp_path / "u32.tif"), want, atol=1e-6)
    rgb16 = np.round(_smooth() * 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", rgb16, photometric="rgb")
    np.testing.assert_allclose(_decoded(tmp_path / "rgb16.tif"), rgb16 / 65535.0, atol=1e-6)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb16, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_allclose(_decoded(tmp_path / "planar.tif"), rgb16 / 65535.0, atol=1e-6)
    tifffile.imwrite(tmp_path / "rgbf64.tif", _smooth(), photometric="rgb")
    np.testing.assert_allclose(_decoded(tmp_path / "rgbf64.tif"), _smooth(), atol=1e-6)


@pytest.mark.parametrize("values, match", [
    (lambda g: g * 4.0, r"values in \[.*\]; float images must hold intensities in \[0, 1\]"),
    (lambda g: g - 0.5, r"\[0, 1\]"),
    (lambda g: np.where(g > 0.5, np.nan, g), "NaN or Inf"),
])
def test_float_tiff_outside_unit_range_is_refused(tmp_path: Path, values, match: str) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "bad.tif"
    Image.fromarray(values(_smooth()[..., 0]).astype(np.float32), "F").save(p)
    with pytest.raises(InputError, match=match) as e:
        load_image(p)
    assert str(p) in str(e.value)


def test_signed_tiff_with_negative_values_is_refused(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "i16.tif", np.arange(-5, H * W - 5, dtype=np.int16).reshape(H, W))
    with pytest.raises(InputError, match="negative int16"):
        load_image(tmp_path / "i16.tif")


# -- modes -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transparent", [False, True])
def test_palette_image(tmp_path: Path, transparent: bool) -> None:
    rng = np.random.default_rng(1)
    palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
    idx = rng.integers(0, 16, (H, W), dtype=np.uint8)
    im = Image.fromarray(idx, "P")
    im.putpalette(palette.flatten().tolist())
    want = palette[idx] / 255.0
    if transparent:
        im.info["transparency"] = 3  # index 3 is fully transparent: white after compositing
        want[idx == 3] = 1.0
    im.save(tmp_path / "p.png", **({"transparency": 3} if transparent else {}))
    np.testing.assert_allclose(_decoded(tmp_path / "p.png"), want, atol=1e-6)


def test_alpha_is_composited_over_white(tmp_path: Path) -> None:
    rgb = _u8(_smooth())
    alpha = np.linspace(0, 255, W, dtype=np.float64).round().astype(np.uint8)[None, :].repeat(H, 0)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "rgba.png")
    a = alpha[..., None] / 255.0
    np.testing.assert_allclose(_decoded(tmp_path / "rgba.png"), rgb / 255.0 * a + (1 - a), atol=1e-6)
    gray = rgb[..., 0]
    Image.fromarray(np.dstack([gray, alpha]), "LA").save(tmp_path / "la.png")
    want = np.repeat(gray[..., None] / 255.0 * a + (1 - a), 3, axis=2)
    np.testing.assert_allclose(_decoded(tmp_path / "la.png"), want, atol=1e-6)
    Image.fromarray(np.dstack([rgb, np.full((H, W), 255, np.uint8)]), "RGBA").save(tmp_path / "opaque.png")
    np.testing.assert_allclose(_decoded(tmp_path / "opaque.png"), rgb / 255.0, atol=1e-6)


def test_cmyk_jpeg_equals_the_rgb_picture(tmp_path: Path) -> None:
    u = _smooth(48, 64)
    Image.fromarray(_u8(u)).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=98)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    d = _decoded(tmp_path / "cmyk.jpg")
    assert np.abs(d - u).mean() < 0.01 and np.abs(d - u).max() < 0.1


def test_one_bit_image(tmp_path: Path) -> None:
    bits = (_smooth()[..., 0] > 0.5)
    Image.fromarray(bits).convert("1").save(tmp_path / "b.png")
    np.testing.assert_array_equal(_decoded(tmp_path / "b.png"), np.repeat(bits[..., None], 3, 2).astype(np.float32))


# -- orientation -----------------------------------------------------------------------------------------
def _with_orientation(a: np.ndarray, path: Path, orientation: int, **save: object) -> None:
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[decode.ORIENTATION_TAG] = orientation
    im.save(path, exif=exif, **save)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_pillow_exif_transpose(tmp_path: Path, orientation: int) -> None:
    stored = _u8(_smooth())
    p = tmp_path / f"o{orientation}.png"
    _with_orientation(stored, p, orientation)
    with Image.open(p) as im:
        upright = np.asarray(ImageOps.exif_transpose(im).convert("RGB")) / 255.0
    np.testing.assert_allclose(_decoded(p), upright, atol=1e-6)
    assert decode.image_size(p) == upright.shape[:2]
    np.testing.assert_array_equal(decode.orient(stored, orientation), np.asarray(ImageOps.exif_transpose(Image.open(p))))


def test_exif_rotated_jpeg_equals_the_upright_one(tmp_path: Path) -> None:
    upright = _smooth(48, 64)
    # A camera held sideways stores the picture rotated; orientation 6 says "rotate 90 clockwise to show".
    _with_orientation(_u8(np.rot90(upright, k=1).copy()), tmp_path / "rot.jpg", 6, quality=98)
    Image.fromarray(_u8(upright)).save(tmp_path / "up.jpg", quality=98)
    rot, up = _decoded(tmp_path / "rot.jpg"), _decoded(tmp_path / "up.jpg")
    assert rot.shape == up.shape == (48, 64, 3)
    assert np.abs(rot - up).mean() < 0.01
    assert np.abs(rot - upright).mean() < 0.01


# -- bad files, sizes, memory ----------------------------------------------------------------------------
def _png_header_only(path: Path, w: int, h: int) -> None:
    """A PNG whose header claims w x h 1-bit pixels, followed by a tiny (truncated) IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [12_000, 40_000])  # over the warning limit (~89 MP) and the error limit (2x)
def test_decompression_bomb_is_refused(tmp_path: Path, side: int) -> None:
    p = tmp_path / "bomb.png"
    _png_header_only(p, side, side)
    with pytest.raises(InputError, match="decompression-bomb limit") as e:
        load_image(p)
    assert str(p) in str(e.value)


def test_directory_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a directory, not an image file"):
        load_image(tmp_path)
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "absent.png")
    good = tmp_path / "good.png"
    Image.fromarray(_u8(_smooth(64, 64))).save(good)
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image\n")
    for name in ("trunc.png", "empty.png", "text.png"):
        with pytest.raises(InputError, match="cannot read image") as e:
            load_image(tmp_path / name)
        assert name in str(e.value)


def test_decoding_that_cannot_fit_is_refused_before_allocating(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from robustbench_iqa.data import memory

    p = tmp_path / "a.png"
    Image.fromarray(_u8(_smooth(64, 64))).save(p)
    monkeypatch.setattr(memory, "available_bytes", lambda: 10_000)
    with pytest.raises(InputError, match=r"decoding image .*a\.png \(64x64 pixels, HxW\) needs about "
                                         r"160 KB, but only 10 KB of memory is available"):
        load_image(p)


def test_sizes_that_cannot_fit() -> None:
    with pytest.raises(InputError, match=r"an image of size 1000000x1000000 \(HxW\) needs about .* GB, but only"):
        img.parse_size("1000000x1000000")
    with pytest.raises(InputError, match="resizing to 1000000x1000000"):
        img.fit_size(torch.zeros(3, 8, 8), (1_000_000, 1_000_000), Resize.RESIZE)
    assert img.parse_size("384x512") == (384, 512)


def test_max_pixels_downscales_only_when_asked(tmp_path: Path) -> None:
    p = tmp_path / "wide.png"
    Image.fromarray(_u8(_smooth(60, 120))).save(p)
    assert load_image(p).shape == (3, 60, 120)
    x = load_image(p, max_pixels=1800)
    assert x.shape[1] * x.shape[2] <= 1800 and abs(x.shape[2] / x.shape[1] - 2) < 0.1
    assert load_image(p, max_pixels=10_000).shape == (3, 60, 120)
    with pytest.raises(InputError, match="max_pixels"):
        load_image(p, max_pixels=0)


def test_fr_pair_sizes_refused_unless_asked(tmp_path: Path) -> None:
    Image.fromarray(_u8(_smooth(32, 48))).save(tmp_path / "x.png")
    Image.fromarray(_u8(_smooth(16, 24))).save(tmp_path / "ref.png")
    with pytest.raises(InputError, match=r"FR pair of different sizes: image .*x\.png is 32x48.*ref\.png is 16x24.*--resize-ref"):
        img.load_pair(tmp_path / "x.png", tmp_path / "ref.png")
    x, r = img.load_pair(tmp_path / "x.png", tmp_path / "ref.png", resize_ref=True)
    assert x.shape == r.shape == (3, 32, 48)
    x, r = img.load_pair(tmp_path / "x.png", tmp_path / "x.png", size=(16, 16))
    assert torch.equal(x, r) and x.shape == (3, 16, 16)
