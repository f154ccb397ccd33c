"""Contract tests of the published IQA adapters: offline, random weights, small inputs.

The network is switched off for the whole module (any socket connection
raises), so every construction proves that random-weight models build without
downloads.  Exactness of the backbone/head split is checked against pyiqa's
own forward passes (an independent reference).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from robustbench_iqa.certify.fs_iqa import FeatureSmoothedIQA
from robustbench_iqa.certify.heads import FTN, Scorer
from robustbench_iqa.errors import InputError, WeightsUnavailableError
from robustbench_iqa.models.base import Backbone, IQAModel, Mode
from robustbench_iqa.models.dreamsim import _CLIP, _IMAGENET, DreamSim, Member
from robustbench_iqa.models.hyperiqa import HyperIQA
from robustbench_iqa.models.pyiqa_adapters import parse_score_range
from robustbench_iqa.models.pyiqa_metrics import parse_pyiqa_name
from robustbench_iqa.models.registry import create_model, list_models, model_info
from robustbench_iqa.models.weights import building, read_state_dict
from tests.toy_models import random_images


@pytest.fixture(scope="module", autouse=True)
def no_network() -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access is disabled in this test module")

    # Randomly initialised deep nets (Inception-ResNet-v2) produce subnormal floats, which
    # are 10x slower on CPUs; flushing them to zero changes nothing these tests check.
    # One intra-op thread: these small passes gain nothing from threads, and on a shared
    # machine an oversubscribed thread pool makes every op wait (10x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(socket.socket, "connect", refuse)
            mp.setattr(socket, "create_connection", refuse)
            mp.setattr(socket, "getaddrinfo", refuse)
            yield
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)


# name -> (input size, mode, lower_better, feature dim)
SPECS: dict[str, tuple[int, Mode, bool, int]] = {
    "dbcnn": (64, Mode.NR, False, 512 * 128),
    "hyperiqa": (64, Mode.NR, False, 224 + 112 * 7 * 7),
    "koncept": (80, Mode.NR, False, 1536),
    "lpips": (64, Mode.FR, True, 64 + 192 + 384 + 256 + 256),
    "dists": (64, Mode.FR, True, 2 * (3 + 64 + 128 + 256 + 512 + 512)),
    "dreamsim-tiny": (48, Mode.FR, True, 2 * (192 + 64)),
}
# The DreamSim adapter with two small ViTs (a DINO-like and a CLIP-like member): the adapter
# logic, fast.  The real ensemble (3 x ViT-B/16) runs in its own test below.
TINY_ENSEMBLE = (
    Member("dino", "dino.pth", *_IMAGENET, quick_gelu=False, pre_norm=False, ln_eps=1e-6, proj_dim=0,
           width=192, depth=2, heads=3),
    Member("clip", "clip.pth", *_CLIP, quick_gelu=True, pre_norm=True, ln_eps=1e-5, proj_dim=64,
           width=96, depth=2, heads=3),
)
# Fast protocols for the contract tests (HyperIQA: one resized patch instead of 25 crops;
# KonCept512: the image as given instead of 384x512).
FAST_OPTIONS: dict[str, dict[str, object]] = {"hyperiqa": {"crops": "resize"}, "koncept": {"input_size": "native"}}
_CACHE: dict[str, IQAModel] = {}


def get_model(name: str) -> IQAModel:
    if name not in _CACHE:
        if name == "dreamsim-tiny":
            model = DreamSim(input_size=32, ensemble=TINY_ENSEMBLE).eval()
            with torch.no_grad():  # zero-initialised tokens make every image alike
                for p in model.parameters():
                    if p.ndim >= 2 or p.shape[-1] > 3:
                        p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
            _CACHE[name] = model
        else:
            _CACHE[name] = create_model(name, weights="random", **FAST_OPTIONS.get(name, {}))  # type: ignore[arg-type]
    return _CACHE[name]


def _inputs(name: str, b: int = 2) -> tuple[torch.Tensor, torch.Tensor | None]:
    size, mode, _, _ = SPECS[name]
    x = random_images(b, size, size, seed=0)
    return x, (random_images(b, size, size, seed=1) if mode is Mode.FR else None)


def test_all_published_models_are_registered() -> None:
    names = set(list_models())
    assert {"dbcnn", "hyperiqa", "koncept", "lpips", "dists", "dreamsim", "pyiqa:<name>"} <= names


def _check_contract(model: IQAModel, x: torch.Tensor, ref: torch.Tensor | None, d: int) -> None:
    ref0 = None if ref is None else ref.clone()
    xg = x.clone().requires_grad_(True)
    feats = model.features(xg, ref)
    assert feats.shape == (x.shape[0], d)
    assert torch.isfinite(feats).all()
    y = model.head(feats)
    assert y.shape == (x.shape[0],) and torch.isfinite(y).all()
    # FS-IQA on these features: FTN (Linear + Sigmoid) -> noise -> scorer, differentiable in x.
    torch.manual_seed(0)
    fs = FeatureSmoothedIQA(Backbone(model), FTN(d, 16), Scorer(16, 8), sigma=0.25, mode=model.mode)
    noisy = fs.scores_from_features(fs.ftn(feats), n=6, generator=torch.Generator().manual_seed(0))
    assert noisy.shape == (x.shape[0], 6) and torch.isfinite(noisy).all()
    # Both heads pass gradients to the features ...
    for out in (y, noisy):
        (gf,) = torch.autograd.grad(out.sum(), feats, retain_graph=True)
        assert torch.isfinite(gf).all() and all(float(gf[i].abs().sum()) > 0 for i in range(x.shape[0]))
    # ... and the backbone passes them on to every input image (one backward pass).
    (g,) = torch.autograd.grad(y.sum() + noisy.sum(), xg)
    assert torch.isfinite(g).all()
    assert all(float(g[i].abs().sum()) > 0 for i in range(x.shape[0]))
    if ref is not None:  # the reference is an input, never perturbed
        assert torch.equal(ref, ref0) and not ref.requires_grad
    with torch.no_grad():
        a, b = model(x, ref), model(x, ref)
    assert torch.equal(a, b)  # deterministic in eval mode
    torch.testing.assert_close(a, y.detach(), rtol=1e-4, atol=1e-5)  # forward == head(features)


@pytest.mark.parametrize("name", list(SPECS))
def test_adapter_contract(name: str) -> None:
    _, mode, lower_better, d = SPECS[name]
    model = get_model(name)
    assert model.mode is mode and model.lower_better is lower_better and not model.training
    lo, hi = model.score_range
    assert lo < hi
    _check_contract(model, *_inputs(name), d)


# ------------------------------------------------- exactness against pyiqa itself
@pytest.mark.parametrize("name", ["dbcnn", "lpips", "dists"])
def test_split_reproduces_pyiqa_forward(name: str) -> None:
    model = get_model(name)
    x, ref = _inputs(name)
    with torch.no_grad():
        ours = model(x, ref)
        theirs = (model.net(x) if ref is None else model.net(x, ref)).flatten()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_hyperiqa_reproduces_pyiqa_multicrop_forward() -> None:
    """pyiqa's eval forward: uniform 224x224 crops, forward_patch each, mean of the scores."""
    net = get_model("hyperiqa").net
    crops = HyperIQA(net, "hyperiqa", "hyperiqa", num_crops=2).eval()
    x = random_images(1, 230, 236, seed=4)
    net.num_crop = 2
    try:
        with torch.no_grad():
            theirs = net(x).flatten()
            feats = crops.features(x)
    finally:
        net.num_crop = 25
    assert feats.shape == (1, 2 * (224 + 112 * 49))
    torch.testing.assert_close(crops.head(feats), theirs, rtol=1e-5, atol=1e-6)


def test_dreamsim_distance_is_cosine_of_embeddings() -> None:
    model = get_model("dreamsim-tiny")
    x, ref = _inputs("dreamsim-tiny")
    with torch.no_grad():
        assert [vit(x).shape[1] for vit in model.members] == [192, 64]
        raw = torch.cat([torch.cat([vit(torch.nn.functional.interpolate(
            im, size=(32, 32), mode="bicubic", antialias=True)) for vit in model.members], dim=1) for im in (x, ref)])
        centred = raw - raw.mean(dim=1, keepdim=True)
        torch.testing.assert_close(model.features(x, ref), torch.cat((centred / centred.norm(dim=1, keepdim=True)).chunk(2), dim=1))
        feats = raw.numpy().astype(np.float64)
        ex, er = feats[:2] - feats[:2].mean(1, keepdims=True), feats[2:] - feats[2:].mean(1, keepdims=True)
        cos = (ex * er).sum(1) / np.linalg.norm(ex, axis=1) / np.linalg.norm(er, axis=1)
        np.testing.assert_allclose(model(x, ref).numpy(), 1 - cos, rtol=1e-4, atol=1e-5)
        assert float(model(x, x).abs().max()) < 1e-5  # identical images: distance 0


@pytest.mark.slow
def test_dreamsim_full_ensemble_contract() -> None:
    model = create_model("dreamsim", weights="random")
    assert [v.member.name for v in model.members] == ["dino_vitb16", "clip_vitb16", "open_clip_vitb16"]
    assert [v.patch_embed.proj.kernel_size for v in model.members] == [(16, 16)] * 3
    assert [tuple(v.pos_embed.shape) for v in model.members] == [(1, 197, 768)] * 3
    x, ref = random_images(2, 64, 64, seed=0), random_images(2, 64, 64, seed=1)
    _check_contract(model, x, ref, 2 * (768 + 512 + 512))


@pytest.mark.slow
def test_koncept_at_paper_size() -> None:
    """KonCept512 at the 384 x 512 working size of the FS-IQA study."""
    model = get_model("koncept")
    _check_contract(model, random_images(1, 384, 512, seed=2), None, 1536)


def test_koncept_architecture() -> None:
    model = get_model("koncept")
    widths = [m.out_features for m in model.fc if isinstance(m, torch.nn.Linear)]
    assert widths == [2048, 1024, 256, 1]
    assert type(model.trunk).__name__ == "InceptionResnetV2"
    with pytest.raises(InputError, match="at least 75x75"):
        model(random_images(1, 64, 64))


def test_fs_iqa_certifies_lpips_end_to_end() -> None:
    model = get_model("lpips")
    x, ref = _inputs("lpips")
    torch.manual_seed(0)
    d = SPECS["lpips"][3]
    fs = FeatureSmoothedIQA(Backbone(model), FTN(d, 16), Scorer(16, 8), sigma=0.25, mode=Mode.FR)
    res = fs.certify(x, ref, n=200, alpha=0.99, tau=0.0, method="lanczos",
                     generator=torch.Generator().manual_seed(0))
    assert len(res) == 2
    for r in res:
        assert not r.abstained and r.lower <= r.score <= r.upper and r.eps_x > 0


def test_inputs_are_validated() -> None:
    with pytest.raises(InputError, match="reference image"):
        get_model("lpips")(random_images(1, 64, 64))
    with pytest.raises(InputError, match="no-reference"):
        get_model("dbcnn")(random_images(1, 64, 64), random_images(1, 64, 64))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        get_model("dbcnn")(random_images(1, 64, 64) * 3)


# ------------------------------------------------------------------- weights
def test_checkpoint_round_trip_torch_and_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import save_model

    src = get_model("lpips")
    x, ref = _inputs("lpips")
    fresh = create_model("lpips", weights="random")  # another random draw
    with torch.no_grad():
        assert not torch.allclose(fresh(x, ref), src(x, ref))
    torch.save(src.state_dict(), tmp_path / "lpips.pt")
    save_model(src, str(tmp_path / "lpips.safetensors"))  # drops aliased tensors (lins.* = lin*)
    for f in ("lpips.pt", "lpips.safetensors"):
        loaded = create_model("lpips", weights=tmp_path / f)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x, ref), src(x, ref))


def test_pyiqa_wrapped_checkpoint_is_accepted(tmp_path: Path) -> None:
    src = get_model("dbcnn")
    torch.save({"params": src.net.state_dict()}, tmp_path / "DBCNN_custom.pth")
    assert set(read_state_dict(tmp_path / "DBCNN_custom.pth")) == set(src.net.state_dict())
    loaded = create_model("dbcnn", weights=tmp_path / "DBCNN_custom.pth")
    x, _ = _inputs("dbcnn")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), src(x))


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="weights file not found"):
        create_model("lpips", weights=tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read checkpoint"):
        create_model("lpips", weights=tmp_path / "junk.pth")
    state = dict(get_model("lpips").state_dict())
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pt")
    with pytest.raises(InputError, match="unexpected keys.*extra.weight"):
        create_model("lpips", weights=tmp_path / "extra.pt")
    bad = dict(state)
    bad["net.lin0.model.1.weight"] = torch.zeros(1, 3, 1, 1)
    torch.save(bad, tmp_path / "shape.pt")
    with pytest.raises(InputError, match="shape mismatch.*lin0"):
        create_model("lpips", weights=tmp_path / "shape.pt")
    partial = {k: v for k, v in state.items() if "lin" not in k}  # trunk only, no calibrated head
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(InputError, match="missing keys.*lin"):
        create_model("lpips", weights=tmp_path / "partial.pt")
    fc_only = {k: v for k, v in get_model("koncept").state_dict().items() if k.startswith("fc.")}
    torch.save(fc_only, tmp_path / "koncept_fc.pt")
    with pytest.raises(InputError, match="missing keys.*trunk"):
        create_model("koncept", weights=tmp_path / "koncept_fc.pt")


def test_head_only_checkpoint_needs_the_imagenet_trunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pyiqa's LPIPS file holds only the lin layers: the trunk must then come from torchvision's
    file, at trunk=PATH or in $TORCH_HOME; the message names the file, the URL and both ways."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))  # empty cache
    state = get_model("lpips").net.state_dict()
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, tmp_path / "LPIPS_v0.1_alex.pth")
    expected = (r"holds only the calibrated head of lpips.*alexnet-owt-7be5be79\.pth \(https://\S+\).*"
                + str(tmp_path / "hub" / "checkpoints").replace(".", r"\.") + r".*trunk=PATH")
    with pytest.raises(InputError, match=expected):
        create_model("lpips", weights=tmp_path / "LPIPS_v0.1_alex.pth")
    with pytest.raises(InputError, match=r"alexnet-owt-7be5be79\.pth.*was not found at .*nope\.pth"):
        create_model("lpips", weights=tmp_path / "LPIPS_v0.1_alex.pth", trunk=tmp_path / "nope.pth")
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "not_alexnet.pth")
    with pytest.raises(InputError, match=r"not the torchvision trunk alexnet-owt-7be5be79\.pth.*lacks"):
        create_model("lpips", weights=tmp_path / "LPIPS_v0.1_alex.pth", trunk=tmp_path / "not_alexnet.pth")
    with pytest.raises(InputError, match="trunk=PATH completes a head-only checkpoint"):
        create_model("lpips", weights="random", trunk=tmp_path / "not_alexnet.pth")


def test_pretrained_without_network_names_the_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyiqa.utils.download_util as du

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(du, "DEFAULT_CACHE_DIR", str(tmp_path / "pyiqa"))
    with pytest.raises(WeightsUnavailableError,
                       match=r"'lpips': \S+\.pth \(https://\S+\) \(URLError.*copy that file to .*hub.*weights=PATH"):
        create_model("lpips", weights="pretrained")
    with pytest.raises(WeightsUnavailableError, match=r"Keras file koncep512-trained-model\.h5.*weights=PATH"):
        create_model("koncept", weights="pretrained")
    with pytest.raises(WeightsUnavailableError, match=r"dreamsim_ensemble_checkpoint\.zip.*weights=PATH"):
        create_model("dreamsim", weights="pretrained")


def test_pretrained_and_head_only_load_from_local_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the files in the torch-hub and pyiqa caches, 'pretrained' works offline and loads them."""
    import pyiqa.utils.download_util as du
    from pyiqa.archs.lpips_arch import default_model_urls
    from torchvision.models import AlexNet_Weights, alexnet

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(du, "DEFAULT_CACHE_DIR", str(tmp_path / "pyiqa"))
    torch.manual_seed(1)
    trunk = alexnet(weights=None).state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(trunk, tmp_path / "hub" / "checkpoints" / Path(AlexNet_Weights.IMAGENET1K_V1.url).name)
    lpips_state = get_model("lpips").net.state_dict()
    lins = {k: torch.randn_like(v) for k, v in lpips_state.items() if k.startswith("lin") and not k.startswith("lins")}
    (tmp_path / "pyiqa").mkdir()
    torch.save(lins, tmp_path / "pyiqa" / Path(default_model_urls["0.1_alex"]).name)
    torch.save(lins, tmp_path / "lpips_head_only.pth")
    for weights in ("pretrained", tmp_path / "lpips_head_only.pth"):
        state = create_model("lpips", weights=weights).net.state_dict()
        torch.testing.assert_close(state["net.slice1.0.weight"], trunk["features.0.weight"])
        torch.testing.assert_close(state["net.slice5.10.bias"], trunk["features.10.bias"])
        torch.testing.assert_close(state["lin3.model.1.weight"], lins["lin3.model.1.weight"])


def test_building_blocks_downloads_and_restores_patches() -> None:
    import urllib.request

    from torchvision.models import VGG16_Weights

    original = torch.hub.download_url_to_file
    with building("toy"):
        with pytest.raises(WeightsUnavailableError,
                           match=r"cannot be built offline without its published weights.*w\.pth \(https://x\.invalid/w\.pth\).*/nonexistent-dir/w\.pth"):
            torch.hub.load_state_dict_from_url("https://x.invalid/w.pth", model_dir="/nonexistent-dir")
        assert VGG16_Weights.verify("IMAGENET1K_V1") is None
        with pytest.raises(WeightsUnavailableError):
            urllib.request.urlopen("https://x.invalid/")
    assert torch.hub.download_url_to_file is original
    assert VGG16_Weights.verify("IMAGENET1K_V1") is VGG16_Weights.IMAGENET1K_V1


def test_name_and_range_parsing() -> None:
    assert parse_pyiqa_name("dbcnn") == ("dbcnn", None, "input")  # no layer: the table's cut
    assert parse_pyiqa_name("dbcnn@fc") == ("dbcnn", "fc", "output")
    assert parse_pyiqa_name("dbcnn@fc:input") == ("dbcnn", "fc", "input")
    assert parse_score_range("~0, ~1") == (0.0, 1.0)
    assert parse_score_range("1, 5") == (1.0, 5.0)
    assert parse_score_range("0, ~") == (0.0, float("inf"))
    assert parse_score_range("quality: 0, 1; rank: 0, 2") == (0.0, 1.0)


# ------------------------------------------------------------ metadata and protocol
@pytest.mark.parametrize("name", ["dbcnn", "hyperiqa", "koncept", "lpips", "dists"])
def test_registered_metadata_equals_the_built_model(name: str) -> None:
    info, model = model_info(name), get_model(name)
    assert (info.mode, info.lower_better, info.score_range) == (model.mode, model.lower_better, model.score_range)


def test_dreamsim_registered_metadata() -> None:
    info = model_info("dreamsim")
    assert (info.mode, info.lower_better, info.score_range) == (DreamSim.mode, DreamSim.lower_better,
                                                                DreamSim.score_range)


def test_koncept_score_scale_is_its_training_scale() -> None:
    """KonCept512 was trained on the 0-100 MOS of koniq10k_distributions_sets.csv, higher = better."""
    info = model_info("koncept")
    assert info.score_range == (0.0, 100.0) and not info.lower_better
    bns = [m for m in get_model("koncept").fc if isinstance(m, torch.nn.BatchNorm1d)]
    assert [bn.eps for bn in bns] == [1e-3] * 3  # Keras' BatchNormalization default


@pytest.mark.parametrize("name", ["dbcnn", "hyperiqa", "koncept", "lpips", "dists"])
def test_protocol_is_recorded_and_rebuilds_the_same_model(name: str) -> None:
    model = get_model(name)
    protocol = model.protocol
    assert protocol and all(isinstance(v, (str, int, float)) for v in protocol.values())
    assert create_model(name, weights="random", **protocol).protocol == protocol  # type: ignore[arg-type]


def test_default_protocols() -> None:
    assert create_model("hyperiqa", weights="random").protocol == {"crops": "uniform", "num_crops": 25, "input_size": "native"}
    assert create_model("koncept", weights="random").protocol == {"input_size": "384x512"}
    assert DreamSim(ensemble=TINY_ENSEMBLE).protocol["input_size"] == "224x224"
    with pytest.raises(InputError, match="crops must be one of"):
        create_model("hyperiqa", weights="random", crops="center")
    with pytest.raises(InputError, match="exactly 1 with crops='resize'"):
        create_model("hyperiqa", weights="random", crops="resize", num_crops=4)
    with pytest.raises(InputError, match="input_size must be HxW"):
        create_model("koncept", weights="random", input_size="big")
    with pytest.raises(InputError, match="takes no argument 'num_crop'.*did you mean 'num_crops'"):
        create_model("hyperiqa", weights="random", num_crop=4)


def test_koncept_resizes_to_its_protocol_size() -> None:
    native = get_model("koncept")
    sized = create_model("koncept", weights="random", input_size=(96, 128))
    sized.load_state_dict(native.state_dict())
    x = random_images(1, 120, 100, seed=3)
    small = torch.nn.functional.interpolate(x, size=(96, 128), mode="bilinear", antialias=True)
    with torch.no_grad():
        torch.testing.assert_close(sized(x), native(small))


def test_hyperiqa_random_crops_are_the_authors_protocol_made_deterministic() -> None:
    net = get_model("hyperiqa").net
    model = HyperIQA(net, "hyperiqa", "hyperiqa", crops="random", num_crops=3, input_size="512x384",
                     crop_seed=5)
    assert model.protocol == {"crops": "random", "num_crops": 3, "input_size": "512x384", "crop_seed": 5}
    origins = model.crop_origins(512, 384)
    assert origins == model.crop_origins(512, 384) and len(set(origins)) == 3
    assert all(0 <= t <= 512 - 224 and 0 <= s <= 384 - 224 for t, s in origins)
    x = random_images(2, 300, 260, seed=9)
    resized = torch.nn.functional.interpolate(x, size=(512, 384), mode="bilinear", antialias=True)
    patches = torch.stack([resized[..., t:t + 224, s:s + 224] for t, s in origins], dim=1).reshape(-1, 3, 224, 224)
    with torch.no_grad():
        expected = net.forward_patch(patches).reshape(2, 3).mean(dim=1)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
        other = HyperIQA(net, "hyperiqa", "hyperiqa", crops="random", num_crops=3, input_size="512x384",
                         crop_seed=6)
        assert not torch.allclose(other(x), model(x))


# ------------------------------------------------------------ DreamSim release files
def test_dreamsim_lora_merge_is_w_plus_scaled_ba() -> None:
    from robustbench_iqa.models.dreamsim import _merge_lora

    g = torch.Generator().manual_seed(0)
    w, a, b = torch.randn(6, 4, generator=g), torch.randn(2, 4, generator=g), torch.randn(6, 2, generator=g)
    key = "base_model.model.extractor_list.1.model.blocks.0.attn.qkv"
    for config, scale in (({"r": 2, "lora_alpha": 8}, 4.0), ({"r": 2, "lora_alpha": 8, "use_rslora": True}, 8 / 2**0.5)):
        state = {"members.1.blocks.0.attn.qkv.weight": w.clone()}
        assert _merge_lora(state, {f"{key}.lora_A.weight": a, f"{key}.lora_B.weight": b}, config, 3) == 1
        torch.testing.assert_close(state["members.1.blocks.0.attn.qkv.weight"], w + scale * b @ a)
    with pytest.raises(InputError, match="names no ensemble member"):
        _merge_lora({}, {key.replace("list.1", "list.7") + ".lora_A.weight": a,
                         key.replace("list.1", "list.7") + ".lora_B.weight": b}, {"r": 2, "lora_alpha": 8}, 3)
    with pytest.raises(InputError, match="without its lora_B"):
        _merge_lora({}, {f"{key}.lora_A.weight": a}, {"r": 2, "lora_alpha": 8}, 3)


def test_dreamsim_release_folder_and_zip_read_alike(tmp_path: Path) -> None:
    import json
    import zipfile

    from safetensors.torch import save_file

    from robustbench_iqa.models.dreamsim import dreamsim_state_from_release

    folder = tmp_path / "cache"
    (folder / "ensemble_lora").mkdir(parents=True)
    model = DreamSim(input_size=32, ensemble=TINY_ENSEMBLE)
    own = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(i)) for i, (k, v) in
           enumerate(model.state_dict().items())}
    dino = {k[len("members.0."):]: v for k, v in own.items() if k.startswith("members.0.")}
    dino["norm.weight"] = torch.ones(192)  # the hub file has DINO's final norm; DreamSim does not use it
    torch.save(dino, folder / "dino.pth")
    clip = {k[len("members.1."):].replace("norm_pre.", "pos_drop."): v for k, v in own.items()
            if k.startswith("members.1.")}
    torch.save({"state_dict": clip}, folder / "clip.pth")
    key = "base_model.model.extractor_list.1.model.blocks.1.attn.qkv"
    a, b = torch.randn(4, 96), torch.randn(288, 4)
    save_file({f"{key}.lora_A.weight": a, f"{key}.lora_B.weight": b}, str(folder / "ensemble_lora" / "adapter_model.safetensors"))
    (folder / "ensemble_lora" / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 2}))
    with zipfile.ZipFile(tmp_path / "release.zip", "w") as z:
        for p in folder.rglob("*"):
            z.write(p, p.relative_to(folder))
    from_dir, _ = dreamsim_state_from_release(folder, ensemble=TINY_ENSEMBLE)
    from_zip, _ = dreamsim_state_from_release(tmp_path / "release.zip", ensemble=TINY_ENSEMBLE)
    assert from_dir.keys() == from_zip.keys() == own.keys()
    for k, v in own.items():
        expected = v + 0.5 * b @ a if k == "members.1.blocks.1.attn.qkv.weight" else v
        torch.testing.assert_close(from_dir[k], expected)
        torch.testing.assert_close(from_zip[k], from_dir[k], rtol=0, atol=0)


def test_dreamsim_missing_dino_backbone_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    (tmp_path / "ensemble_lora").mkdir()
    for f in ("clip_vitb16_pretrain.pth.tar", "open_clip_vitb16_pretrain.pth.tar", "ensemble_lora/adapter_config.json",
              "ensemble_lora/adapter_model.bin"):
        (tmp_path / f).write_bytes(b"")
    with pytest.raises(InputError, match=r"DINO backbone dino_vitbase16_pretrain\.pth \(https://dl\.fbaipublicfiles.*"
                                         r"checkpoints/dino_vitbase16_pretrain\.pth.*dino=PATH"):
        create_model("dreamsim", weights=tmp_path)
    with pytest.raises(InputError, match="DINO backbone file not found"):
        create_model("dreamsim", weights=tmp_path, dino=tmp_path / "nope.pth")
