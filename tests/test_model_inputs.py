"""Inputs like pyiqa: paths and PIL images accepted by ``model(...)``; one range check with a stated
float tolerance for every model (the reference: the score of the clamped tensor, and of the tensor
decoded by the suite's own file loader)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustbench_iqa.data.images import load_image
from robustbench_iqa.errors import InputError
from robustbench_iqa.models import create_model
from robustbench_iqa.validation import RANGE_TOLERANCE, check_images


def _png(path: Path, seed: int, hw: tuple[int, int] = (24, 32)) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(0, 256, size=(*hw, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return arr


@pytest.fixture(scope="module")
def nr():  # type: ignore[no-untyped-def]
    return create_model("default-nr")


@pytest.fixture(scope="module")
def fr():  # type: ignore[no-untyped-def]
    return create_model("default-fr")


def test_tolerance_is_stated_and_values_inside_it_are_clamped(nr) -> None:  # type: ignore[no-untyped-def]
    from robustbench_iqa.certify.defense import create_defense

    assert RANGE_TOLERANCE == 1e-6
    x = torch.rand(2, 3, 24, 32, generator=torch.Generator().manual_seed(0))
    x[0, 0, 0, 0], x[1, 1, 1, 1] = 1.0 + 0.9e-6, -0.9e-6
    y = check_images(x)
    assert float(y.max()) == 1.0 and float(y.min()) >= 0.0
    torch.testing.assert_close(y, x.clamp(0, 1), rtol=0, atol=0)
    torch.testing.assert_close(nr.check_inputs(x)[0], x.clamp(0, 1), rtol=0, atol=0)
    ms = create_defense("ms", nr, sigma=0.25)
    with torch.no_grad():  # a defense's input check is the same one: the clamped image is scored
        a = ms.predict(x, n=8, generator=torch.Generator().manual_seed(1))
        b = ms.predict(x.clamp(0, 1), n=8, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [1.0 + 2e-6, 1.5, -1e-5])
def test_values_beyond_the_tolerance_are_refused_for_every_model(nr, fr, bad: float) -> None:  # type: ignore[no-untyped-def]
    from robustbench_iqa.certify.defense import create_defense

    x = torch.full((1, 3, 16, 16), 0.5)
    x[0, 0, 0, 0] = bad
    ref = torch.full_like(x, 0.5)
    for call in (lambda: nr.check_inputs(x), lambda: fr.check_inputs(x, ref),
                 lambda: create_defense("ms", nr, sigma=0.25).predict(x, n=4),
                 lambda: create_defense("ms", fr, sigma=0.25).predict(x, ref, n=4)):
        with pytest.raises(InputError, match=r"values in \[0, 1\] \(tolerance 1e-06\)") as err:
            call()
        assert f"{float(torch.tensor(bad)):.9g}" in str(err.value)  # enough digits to see the cause


def test_paths_and_pil_images_equal_the_decoded_tensor(nr, fr, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    arr = _png(a, 1)
    _png(b, 2)
    xa = torch.from_numpy(arr).permute(2, 0, 1).float().div(255)[None]  # independent decode
    torch.testing.assert_close(load_image(a)[None], xa)
    with torch.no_grad():
        want = nr(xa)
        for given in (a, str(a), Image.open(a), [a], [Image.open(a)]):
            torch.testing.assert_close(nr(given), want, rtol=0, atol=0)
        both = nr([a, Image.open(b)])
        assert both.shape == (2,)
        torch.testing.assert_close(both[:1], want, rtol=1e-5, atol=1e-6)  # batched conv rounding
        torch.testing.assert_close(fr(a, b), fr(xa, load_image(b)[None]), rtol=0, atol=0)
        torch.testing.assert_close(fr(xa, str(b)), fr(xa, load_image(b)[None]), rtol=0, atol=0)
        gray = Image.fromarray(arr[..., 0])  # gray is repeated on the 3 channels, like a gray file
        torch.testing.assert_close(nr(gray), nr(xa[:, :1].expand(1, 3, 24, 32)), rtol=0, atol=0)


def test_other_inputs_are_one_clear_error(nr, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match="x must be a torch.Tensor .*, an image file path, a PIL image.*ndarray"):
        nr(np.zeros((1, 3, 8, 8), dtype=np.float32))
    with pytest.raises(InputError, match="not found|does not exist|no such"):
        nr(tmp_path / "missing.png")
    _png(tmp_path / "small.png", 3, (8, 8))
    _png(tmp_path / "big.png", 4, (9, 8))
    with pytest.raises(InputError, match="different sizes"):
        nr([tmp_path / "small.png", tmp_path / "big.png"])
    with pytest.raises(InputError, match="no-reference"):
        nr(tmp_path / "small.png", tmp_path / "small.png")
