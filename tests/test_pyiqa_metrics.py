"""Every metric of ``pyiqa.list_models()`` as ``pyiqa:<metric>``: builds offline or refuses clearly.

One parametrized test over pyiqa's own list, against :data:`PYIQA_TABLE`: a learned metric with a
cut builds with random weights and no network, every hooked layer runs, the features are finite
and differentiable in the image, and where the table declares a head, ``head(features)``
reproduces pyiqa's own forward; a hand-crafted formula scores but refuses features; the rest
raise one InputError whose message says why (a file it needs and where, a missing module, or why
the metric is out of scope).  Nothing is downloaded.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pyiqa
import pytest
import torch

from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import Mode
from robustbench_iqa.models.pyiqa_metrics import PYIQA_TABLE, Cut, Formula, Refusal, Unverified
from robustbench_iqa.models.registry import create_model
from tests.toy_models import random_images

# Metrics whose random-weight forward pass takes over 10 s on a CPU (ViT-B/8 crops, 25 ResNet crops, ...).
SLOW = {"maniqa", "maniqa-kadid", "maniqa-pipal", "tres", "tres-flive", "hyperiqa", "topiq_iaa_res50"}
SIZE = {"pieapp": 96, "ms_ssim": 192}  # input size of each metric's test (default 64)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access is disabled in this test module")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no 5-try retry loops
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


def test_table_covers_every_pyiqa_metric() -> None:
    assert set(PYIQA_TABLE) == set(pyiqa.list_models())


def _params() -> list[object]:
    return [pytest.param(m, marks=pytest.mark.slow) if m in SLOW else m for m in sorted(pyiqa.list_models())]


def _check_cut(metric: str, entry: Cut) -> None:
    model = create_model(f"pyiqa:{metric}", weights="random")
    size = SIZE.get(metric, 64)
    if hasattr(model.net, "test_sample"):  # MANIQA / TReS crops: 2 are enough to check the cut
        model.net.test_sample = 2
    x = random_images(2, size, size, seed=1).requires_grad_(True)
    ref = random_images(2, size, size, seed=2) if model.mode is Mode.FR else None
    feats = model.features(x, ref)
    assert feats.shape[0] == 2 and feats.shape[1] > 0 and bool(torch.isfinite(feats).all())
    assert {model.layers[i][0] for i, _, _ in model._shapes} == {name for name, _ in entry.layers}
    w = torch.randn(feats.shape, generator=torch.Generator().manual_seed(0))  # not a plain sum: a LayerNorm'd
    (grad,) = torch.autograd.grad((feats * w).sum(), x)                       # output sums to a constant
    assert float(grad.abs().sum()) > 0  # b(x) is differentiable in the (distorted) image
    with torch.no_grad():
        score = model(x.detach(), ref)
        assert score.shape == (2,) and bool(torch.isfinite(score).all())
        if entry.head is not None:
            torch.testing.assert_close(model.head(feats.detach()), score, rtol=1e-4, atol=1e-5)
        else:
            with pytest.raises(InputError, match="no standalone head"):
                model.head(feats.detach())


@pytest.mark.parametrize("metric", _params())
def test_metric_builds_offline_or_refuses_clearly(metric: str) -> None:
    entry = PYIQA_TABLE[metric]
    if isinstance(entry, Cut):
        _check_cut(metric, entry)
        return
    if isinstance(entry, Refusal):
        with pytest.raises(InputError, match=re.escape(f"pyiqa:{metric} is not supported: {entry.reason}")):
            create_model(f"pyiqa:{metric}")
        return
    try:
        model = create_model(f"pyiqa:{metric}", weights="random")
    except InputError as exc:  # needs a file, a module or a HuggingFace model that is not here
        message = str(exc)
        assert "\n" not in message
        needs = [r"copy that file to \S+|copy it there", r"pkg_resources.*setuptools<82", r"HuggingFace|huggingface",
                 r"cannot be built here"]
        assert any(re.search(n, message) for n in needs), message
        if isinstance(entry, Formula):
            assert entry.files  # the formulas without parameter files always build
        return
    if isinstance(entry, Formula):
        size = SIZE.get(metric, 64)
        x = random_images(2, size, size, seed=1)
        ref = random_images(2, size, size, seed=2) if model.mode is Mode.FR else None
        with torch.no_grad():
            assert bool(torch.isfinite(model(x, ref)).all())
        with pytest.raises(InputError, match="hand-crafted formula with no learned backbone"):
            model.features(x, ref)
    else:
        assert isinstance(entry, Unverified)  # built from local caches: a layer must be named


def test_named_layer_and_errors() -> None:
    model = create_model("pyiqa:cnniqa@conv1", weights="random")
    x = random_images(2, 20, 20, seed=6)
    with torch.no_grad():
        assert model.features(x).shape == (2, 50 * 14 * 14)
        torch.testing.assert_close(model.features(x), model.net.conv1(x).flatten(1))
        with pytest.raises(InputError, match="no standalone head"):
            model.head(model.features(x))
    with pytest.raises(InputError, match="no submodule 'nope'"):
        create_model("pyiqa:cnniqa@nope", weights="random")
    with pytest.raises(InputError, match="unknown pyiqa metric 'nosuchmetric'"):
        create_model("pyiqa:nosuchmetric")
    with pytest.raises(InputError, match="hand-crafted formula with no layers to name"):
        create_model("pyiqa:psnr@conv1")
    with pytest.raises(InputError, match="feature take must be 'input' or 'output'"):
        create_model("pyiqa:cnniqa@fc1:middle", weights="random")


def test_cnniqa_cut_is_the_input_of_its_mlp_head() -> None:
    """CNNIQA: conv -> max/min pooling (b(x), D = 100) -> fc1 -> fc2 -> fc3; checked by hand."""
    model = create_model("pyiqa:cnniqa", weights="random")
    x = random_images(2, 40, 40, seed=5)
    with torch.no_grad():
        h = model.net.conv1(x)
        pooled = torch.cat([h.amax(dim=(2, 3)), h.amin(dim=(2, 3))], dim=1)
        torch.testing.assert_close(model.features(x), pooled)


def test_lpips_cut_matches_the_dedicated_adapter() -> None:
    """pyiqa:lpips' features (the lin layers' inputs) averaged over space are the `lpips`
    adapter's features: the same cut, the exact split of the dedicated model."""
    generic = create_model("pyiqa:lpips", weights="random")
    exact = create_model("lpips", weights="random")
    exact.net.load_state_dict(generic.net.state_dict())
    x, r = random_images(1, 64, 64, seed=7), random_images(1, 64, 64, seed=8)
    with torch.no_grad():
        feats = generic.features(x, r)
        means = []
        start = 0
        for _, _, shape in generic._shapes:
            n = int(torch.Size(shape).numel())
            means.append(feats[:, start:start + n].reshape(1, *shape).mean(dim=(2, 3)))
            start += n
        torch.testing.assert_close(torch.cat(means, dim=1), exact.features(x, r), rtol=1e-5, atol=1e-7)
