"""The embedded ``default`` dataset: built offline from images that ship with scikit-image.

Nothing is downloaded.  Nine colour images of ``skimage.data`` are each
centre-cropped to the 3:4 aspect ratio of the FS-IQA study (384x512), resized
to 192x256 and cut into four non-overlapping 96x128 reference crops (36
references).  Every reference is distorted by the six types of
:mod:`robustbench_iqa.data.distortions` at five levels each (KADID-10k style),
giving 36 x 30 = 1080 distorted images, listed in a fixed shuffled order so
that ``head(limit)`` is a mixed subset.  Each one is labelled by the weak-label
ensemble of :mod:`robustbench_iqa.data.weak_labels` (PSNR, SSIM, GMSD against
its reference, mapped to [0, 1] and averaged; KADIS-700k practice), computed
on the saved 8-bit images.  Labels are weak labels, not human opinion scores.

Samples carry the image, its reference and ``group`` = reference name, so the
same dataset serves FR (x, ref) and NR (x alone) models and splits keep the
content of a reference on one side.

The PNGs, ``index.csv`` and ``meta.json`` are cached in
``$RBIQA_CACHE/embedded-v1`` (default ``~/.cache/robustbench_iqa/embedded-v1``).
The cache is built once, in a temporary folder that is renamed into place when
complete, so an interrupted build never leaves a half cache; a missing or
corrupt index triggers a rebuild.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from robustbench_iqa.data.base import IQADataset, IQASample
from robustbench_iqa.data.distortions import DISTORTIONS, LEVELS, apply_distortion, to_uint8
from robustbench_iqa.data.images import Resize
from robustbench_iqa.data.registry import register_dataset
from robustbench_iqa.data.weak_labels import weak_label
from robustbench_iqa.errors import InputError

VERSION = "embedded-v1"
SOURCES: tuple[str, ...] = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
    "immunohistochemistry", "retina", "colorwheel", "logo",
)
"""Colour images of ``skimage.data`` (``cat`` is ``chelsea`` and is skipped)."""
CROP: tuple[int, int] = (96, 128)
"""Reference crop size (H, W), the 3:4 ratio of the FS-IQA working size 384x512."""
GRID: tuple[int, int] = (2, 2)
"""Crops per source image (rows, columns), non-overlapping."""
ORDER_SEED = 0
"""Seed of the fixed permutation of the index rows."""
COLUMNS = ("name", "image", "ref", "score", "group", "distortion", "level", "psnr", "ssim", "gmsd")
WEAK_LABEL_NOTE = ("weak labels: mean of PSNR, SSIM and GMSD against the reference, each mapped "
                   "to [0, 1] (KADIS-700k practice); not human opinion scores")


def cache_dir() -> Path:
    """``$RBIQA_CACHE/embedded-v1``, or ``~/.cache/robustbench_iqa/embedded-v1``."""
    base = os.environ.get("RBIQA_CACHE")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "robustbench_iqa"
    return root / VERSION


def _expected_rows() -> int:
    return len(SOURCES) * GRID[0] * GRID[1] * len(DISTORTIONS) * len(LEVELS)


def _fingerprint() -> dict[str, object]:
    """What the cache was built from; a different fingerprint means a rebuild."""
    return {"version": VERSION, "sources": list(SOURCES), "crop": list(CROP), "grid": list(GRID),
            "distortions": list(DISTORTIONS), "levels": list(LEVELS), "rows": _expected_rows(),
            "order_seed": ORDER_SEED}


def _source_image(name: str) -> np.ndarray:
    """``skimage.data.<name>`` as uint8 RGB (alpha composited on white)."""
    import skimage.data

    arr = np.asarray(getattr(skimage.data, name)())
    if arr.ndim == 3 and arr.shape[-1] == 4:
        alpha = arr[..., 3:4].astype(np.float64) / 255.0
        arr = to_uint8((arr[..., :3] / 255.0) * alpha + (1.0 - alpha))
    return arr[..., :3].astype(np.uint8)


def reference_crops() -> dict[str, np.ndarray]:
    """The reference crops ``{"<source>-<k>": uint8 (96, 128, 3)}`` in a fixed order."""
    (h, w), (gr, gc) = CROP, GRID
    out: dict[str, np.ndarray] = {}
    for src in SOURCES:
        arr = _source_image(src)
        H, W = arr.shape[:2]
        ch, cw = (H, H * w // h) if H * w // h <= W else (W * h // w, W)  # largest 3:4 box
        top, left = (H - ch) // 2, (W - cw) // 2
        box = Image.fromarray(arr[top : top + ch, left : left + cw])
        big = np.asarray(box.resize((gc * w, gr * h), Image.Resampling.LANCZOS))
        for r in range(gr):
            for c in range(gc):
                out[f"{src}-{r * gc + c}"] = big[r * h : (r + 1) * h, c * w : (c + 1) * w].copy()
    return out


def _save_png(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr).save(path, format="PNG")


def _build_into(dest: Path, *, progress: bool) -> None:
    """Write refs/, dist/, index.csv and meta.json into the (empty) folder ``dest``."""
    (dest / "refs").mkdir()
    (dest / "dist").mkdir()
    rows: list[dict[str, object]] = []
    crops = reference_crops()
    for ref_name, ref in tqdm(crops.items(), desc=f"building {VERSION} dataset", unit="ref",
                              disable=not progress):
        _save_png(ref, dest / "refs" / f"{ref_name}.png")
        ref_f = ref / 255.0
        for dist in DISTORTIONS:
            for level in LEVELS:
                name = f"{ref_name}-{dist}-{level}"
                rng = np.random.default_rng(zlib.crc32(name.encode()))
                img = to_uint8(apply_distortion(ref_f, dist, level, rng))
                _save_png(img, dest / "dist" / f"{name}.png")
                lab = weak_label(img / 255.0, ref_f)
                rows.append({"name": name, "image": f"dist/{name}.png", "ref": f"refs/{ref_name}.png",
                             "score": f"{lab.score:.6f}", "group": ref_name, "distortion": dist,
                             "level": level, "psnr": f"{lab.psnr:.4f}", "ssim": f"{lab.ssim:.6f}",
                             "gmsd": f"{lab.gmsd:.6f}"})
    # A fixed shuffle, so that ``head(limit)`` mixes contents, distortions and levels.
    rows = [rows[i] for i in np.random.default_rng(ORDER_SEED).permutation(len(rows))]
    with open(dest / "index.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    (dest / "meta.json").write_text(json.dumps({**_fingerprint(), "labels": WEAK_LABEL_NOTE}, indent=1))


def read_index(folder: Path) -> list[dict[str, str]] | None:
    """The rows of ``folder/index.csv`` if the cache is complete and current, else None."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        with open(folder / "index.csv", newline="") as fh:
            reader = csv.DictReader(fh)
            if tuple(reader.fieldnames or ()) != COLUMNS:
                return None
            rows = list(reader)
    except (OSError, ValueError, csv.Error):
        return None
    if any(meta.get(k) != v for k, v in _fingerprint().items()) or len(rows) != _expected_rows():
        return None
    for r in rows:
        try:
            score = float(r["score"])
        except (TypeError, ValueError):
            return None
        if not 0.0 <= score <= 1.0 or not (folder / r["image"]).is_file() or not (folder / r["ref"]).is_file():
            return None
    return rows


def ensure_built(folder: Path | None = None, *, progress: bool = True) -> Path:
    """Build the cache at ``folder`` (default :func:`cache_dir`) unless it is complete; return it."""
    final = Path(folder) if folder is not None else cache_dir()
    if read_index(final) is not None:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-build-", dir=final.parent))
    try:
        _build_into(tmp, progress=progress)
        if final.exists():  # stale or corrupt: move it aside, then swap in the new build
            if read_index(final) is not None:  # another process finished first
                return final
            trash = Path(tempfile.mkdtemp(prefix=f".{final.name}-old-", dir=final.parent))
            os.replace(final, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, final)
    except OSError as exc:
        if read_index(final) is None:
            raise InputError(f"cannot build the embedded dataset in {final}: {exc}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


_BUILT = frozenset({"refs", "dist", "index.csv", "meta.json"})
"""What a build writes in its folder (a folder holding only these is a stale or damaged build)."""


def _check_root(p: Path) -> None:
    """An explicit ``root`` is an existing folder: the built dataset (complete, or stale or damaged:
    rebuilt), or an empty folder to build it in; never created from nothing, never a folder of
    other files, which building would replace."""
    where = f"leave root out to use the cache ({cache_dir()})"
    if not p.exists():
        raise InputError(f"dataset 'default': root {p} does not exist; create an empty folder there to build the "
                         f"embedded dataset in it, or {where}")
    if not p.is_dir():
        raise InputError(f"dataset 'default': root {p} is a file, not a folder; {where}")
    if read_index(p) is None and any(c.name not in _BUILT for c in p.iterdir()):
        raise InputError(f"dataset 'default': root {p} holds other files and no complete embedded dataset; give "
                         f"an empty folder (it is built there) or {where}")


@register_dataset("default", references=True, needs_root=False,
                  description="embedded: 36 skimage.data crops x 6 distortions x 5 levels, weak FR labels")
def embedded_dataset(
    *,
    root: Path | None = None,
    size: tuple[int, int] | None = CROP,
    resize: Resize | str = Resize.RESIZE,
    progress: bool = True,
) -> IQADataset:
    """The embedded dataset; ``root`` overrides the cache folder.  Builds it on first use.

    Its images are all 96x128 (:data:`CROP`), so the native size (``size=None``) is recorded as
    that size."""
    if root is not None:
        _check_root(Path(root).expanduser())
    folder = ensure_built(Path(root).expanduser() if root is not None else None, progress=progress)
    rows = read_index(folder)
    if rows is None:
        raise InputError(f"the embedded dataset cache in {folder} is unreadable; delete it to rebuild")
    samples = tuple(
        IQASample(name=r["name"], image=folder / r["image"], score=float(r["score"]),
                  ref=folder / r["ref"], group=r["group"])
        for r in rows
    )
    extra = {"labels": WEAK_LABEL_NOTE, "version": VERSION, "source": "skimage.data",
             "distortions": ",".join(DISTORTIONS), "levels": ",".join(map(str, LEVELS))}
    return IQADataset(name="default", samples=samples, higher_better=True, score_range=(0.0, 1.0),
                      size=(int(size[0]), int(size[1])) if size is not None else CROP, resize=Resize(resize),
                      root=folder, extra=extra)
