"""The six study models are the published networks: official code vs the suite's adapters.

Each official implementation is built with random weights and no network (its download
function replaced or given local files), its weights are written in the official checkpoint
format, loaded through the suite's converters (the ``weights=PATH`` path of
``create_model``), and the outputs of both are compared on several images and sizes:

* LPIPS: the ``lpips`` package (``lpips.LPIPS``, the published linear heads it ships);
* DISTS: the ``DISTS_pytorch`` package (``DISTS``, the published alpha/beta it ships);
* DreamSim: the ``dreamsim`` package (``dreamsim.dreamsim()``, LoRA ensemble);
* DBCNN, HyperIQA (pyiqa layout): pyiqa's architectures;
* HyperIQA (authors' ``.pkl`` layout) and KonCept512 (Keras ``.h5``): stored outputs of the
  official code (``scripts/fidelity/*.py``) on deterministic weights, rebuilt here.

The tests needing the official packages are marked ``fidelity`` (``pip install -e .[fidelity]``;
they are skipped when the packages are absent); the fixture-based ones run in the fast suite.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from robustbench_iqa.models.registry import create_model
from tests.reference_weights import images, keras_weight, torch_weight

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module", autouse=True)
def offline() -> Iterator[None]:
    """No network, one thread, subnormals flushed (random deep nets are 10x slower without)."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access is disabled in the fidelity tests")

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


def _batch(seed: int, n: int, h: int, w: int) -> torch.Tensor:
    return torch.from_numpy(images(seed, n, h, w)).permute(0, 3, 1, 2).contiguous().float() / 255


def _rel_err(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    err = float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-12))
    print(f"relative error {err:.2e}")
    return err


# ------------------------------------------------------------------------- KonCept512
def _write_keras_h5(path: Path, fixture: dict, *, rename: dict[str, str] | None = None) -> None:
    """The Keras 2 ``save_weights`` layout of the fixture's graph, with the reference weights."""
    import h5py

    rename = rename or {}
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [rename.get(n, n).encode() for n, _ in fixture["layout"]]
        f.attrs["keras_version"] = fixture["h5_attrs"]["keras_version"].encode()
        f.attrs["backend"] = b"tensorflow"
        for name, weights in fixture["layout"]:
            new = rename.get(name, name)
            g = f.create_group(new)
            g.attrs["weight_names"] = [f"{new}/{w}:0".encode() for w, _ in weights]
            for w, shape in weights:
                g.create_dataset(f"{new}/{w}:0", data=keras_weight(name, w, shape, seed=fixture["weights_seed"]))


def _keras_renumbered(fixture: dict) -> dict[str, str]:
    """Keras 2.2-style names (``conv2d_1`` first), as a file written by another session has."""
    import re

    out = {}
    for name, _ in fixture["layout"]:
        m = re.match(r"^(conv2d|batch_normalization)(?:_(\d+))?$", name)
        if m:
            out[name] = f"{m.group(1)}_{int(m.group(2) or 0) + 7}"
    return out


@pytest.fixture(scope="module")
def koncept_fixture() -> dict:
    return json.loads((FIXTURES / "koncept_keras.json").read_text())


@pytest.mark.slow
@pytest.mark.fidelity
@pytest.mark.parametrize("renumber", [False, True])
def test_koncept_h5_matches_the_official_keras_graph(tmp_path: Path, koncept_fixture: dict, renumber: bool) -> None:
    """KonCept512 from a Keras .h5 (h5py) == the official Keras graph: scores to 1e-5 relative,
    pooled features to 1e-5 relative, at 384x512, 299x299 and 256x320."""
    pytest.importorskip("h5py")
    h5 = tmp_path / "koncep512-trained-model.h5"
    _write_keras_h5(h5, koncept_fixture, rename=_keras_renumbered(koncept_fixture) if renumber else None)
    model = create_model("koncept", weights=h5, input_size="native")
    assert model.weights_source.files[0].path == h5.resolve()
    for case in koncept_fixture["cases"][: 1 if renumber else None]:
        x = _batch(case["seed"], case["n"], case["height"], case["width"])
        with torch.no_grad():
            feats = model.features(x)
            scores = model.head(feats)
        assert _rel_err(scores, torch.tensor(case["scores"])) < 1e-5
        assert _rel_err(feats, torch.tensor(case["features"], dtype=torch.float32)) < 1e-5


# --------------------------------------------------------------------------- HyperIQA
@pytest.fixture(scope="module")
def hyperiqa_fixture() -> dict:
    return json.loads((FIXTURES / "hyperiqa_authors.json").read_text())


def _authors_state(fixture: dict) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(torch_weight(k, shape, seed=fixture["weights_seed"]))
            for k, shape in fixture["layout"]}


@pytest.mark.fidelity
def test_hyperiqa_authors_pkl_matches_the_authors_code(tmp_path: Path, hyperiqa_fixture: dict) -> None:
    """The authors' koniq_pretrained.pkl layout, converted, == their HyperNet + TargetNet on
    224x224 patches: scores (their 0-100 scale / 100) and target-network inputs to 1e-5 relative."""
    pkl = tmp_path / "koniq_pretrained.pkl"
    torch.save(_authors_state(hyperiqa_fixture), pkl)
    model = create_model("hyperiqa", weights=pkl, crops="resize")
    assert "authors" in model.weights_source.format
    for case in hyperiqa_fixture["cases"]:
        x = _batch(case["seed"], case["n"], case["height"], case["width"])
        with torch.no_grad():
            feats = model.features(x)
            scores = model.head(feats)
        assert _rel_err(scores, torch.tensor(case["scores"]) / 100) < 1e-5
        target_in = torch.tensor(case["target_in_vec"], dtype=torch.float32)
        assert _rel_err(feats[:, : target_in.shape[1]], target_in) < 1e-5


@pytest.mark.fidelity
def test_hyperiqa_both_layouts_give_the_same_model(tmp_path: Path, hyperiqa_fixture: dict) -> None:
    """The authors' layout converted and saved as a pyiqa checkpoint loads to the same scores,
    with pyiqa's own multi-crop forward as the reference."""
    pkl = tmp_path / "koniq_pretrained.pkl"
    torch.save(_authors_state(hyperiqa_fixture), pkl)
    authors = create_model("hyperiqa", weights=pkl, num_crops=4)
    pth = tmp_path / "HyperIQA-resnet50-koniq10k.pth"
    torch.save({"params": authors.net.state_dict()}, pth)
    pyiqa_layout = create_model("hyperiqa", weights=pth, num_crops=4)
    x = _batch(5, 2, 240, 260)
    with torch.no_grad():
        a, b = authors(x), pyiqa_layout(x)
        authors.net.num_crop = 4
        reference = authors.net(x).flatten()
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a, reference, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ LPIPS and DISTS
def _torchvision_file(features: torch.nn.Module, path: Path) -> Path:
    """A torchvision-format trunk checkpoint (``features.<i>.*``) of ``features``."""
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)
    return path


@pytest.mark.slow
@pytest.mark.fidelity
def test_lpips_matches_the_lpips_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """lpips.LPIPS(net='alex', version='0.1') with its shipped heads and a random AlexNet trunk
    == the suite's LPIPS from the same head file + trunk file: 1e-5 relative, 3 sizes."""
    lpips = pytest.importorskip("lpips")
    import torchvision

    torch.manual_seed(0)
    theirs = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False).eval()
    head = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    features = torchvision.models.alexnet(weights=None).features
    for sl in (theirs.net.slice1, theirs.net.slice2, theirs.net.slice3, theirs.net.slice4, theirs.net.slice5):
        for name, module in sl.named_children():
            features[int(name)].load_state_dict(module.state_dict())
    trunk = _torchvision_file(features, tmp_path / "alexnet-owt-7be5be79.pth")
    ours = create_model("lpips", weights=head, trunk=trunk)
    assert [f.role for f in ours.weights_source.files] == ["lpips weights", "ImageNet trunk"]
    # The same trunk from $TORCH_HOME's cache, without trunk=PATH.
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    trunk.rename(tmp_path / "hub" / "checkpoints" / trunk.name)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    cached = create_model("lpips", weights=head)
    for seed, (h, w) in enumerate([(64, 64), (96, 128), (131, 97)]):
        x, r = _batch(seed, 2, h, w), _batch(seed + 50, 2, h, w)
        with torch.no_grad():
            ref = theirs(x * 2 - 1, r * 2 - 1).flatten()
            assert _rel_err(ours(x, r), ref) < 1e-5
            torch.testing.assert_close(cached(x, r), ours(x, r), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.fidelity
def test_dists_matches_the_dists_pytorch_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DISTS_pytorch.DISTS with its shipped alpha/beta and a random VGG-16 trunk == the suite's
    DISTS from the same weights.pt + trunk file: 1e-5 relative, 3 sizes."""
    dists_pt = pytest.importorskip("DISTS_pytorch.DISTS_pt")
    import torchvision

    torch.manual_seed(0)
    vgg = torchvision.models.vgg16(weights=None)
    monkeypatch.setattr(dists_pt.models, "vgg16", lambda *a, **k: vgg)  # its download, replaced
    theirs = dists_pt.DISTS(load_weights=False).eval()
    head = Path(dists_pt.__file__).parent / "weights.pt"
    published = torch.load(head, map_location="cpu", weights_only=True)
    theirs.alpha.data, theirs.beta.data = published["alpha"], published["beta"]
    trunk = _torchvision_file(vgg.features, tmp_path / "vgg16-397923af.pth")
    ours = create_model("dists", weights=head, trunk=trunk)
    for seed, (h, w) in enumerate([(64, 64), (96, 128), (131, 97)]):
        x, r = _batch(seed, 2, h, w), _batch(seed + 50, 2, h, w)
        with torch.no_grad():
            assert _rel_err(ours(x, r), theirs(x, r).flatten()) < 1e-5


# --------------------------------------------------------------------------- DreamSim
def _dreamsim_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A DreamSim cache folder as ``dreamsim()`` leaves it, with random weights: the CLIP and
    OpenCLIP ``*_pretrain.pth.tar``, the DINO files, and a LoRA adapter saved by peft."""
    from dreamsim.config import dreamsim_args
    from dreamsim.feature_extraction import vision_transformer as dvit
    from dreamsim.model import PerceptualModel
    from peft import LoraConfig, get_peft_model

    cache = tmp_path / "dreamsim-cache"
    (cache / "checkpoints").mkdir(parents=True)
    g = torch.Generator().manual_seed(0)

    def randomise(module: torch.nn.Module, scale: float = 0.02) -> dict[str, torch.Tensor]:
        sd = module.state_dict()
        out = {}
        for k, v in sd.items():
            if k.endswith("weight") and v.ndim == 1:  # LayerNorm scales
                out[k] = 1 + 0.1 * torch.randn(v.shape, generator=g)
            else:
                out[k] = scale * torch.randn(v.shape, generator=g)
        return out

    # DINO: the hub model (dreamsim's own copy of DINO's ViT-B/16) and the full DINO checkpoint
    dino = dvit.vit_base(patch_size=16)
    dino.load_state_dict(randomise(dino))
    torch.save(dino.state_dict(), cache / "checkpoints" / "dino_vitbase16_pretrain.pth")
    head = dvit.DINOHead(768, 2048)
    student = {f"module.head.{k}": v for k, v in head.state_dict().items()}
    student["module.head.last_layer.weight"] = torch.randn(2048, 256, generator=g)
    torch.save({"student": student}, cache / "dino_vitb16_pretrain.pth")
    for name in ("clip_vitb16", "open_clip_vitb16"):
        vit = dvit.vit_base(patch_size=16)
        vit.pos_drop = torch.nn.LayerNorm(768)
        sd = randomise(vit)
        sd["proj"] = 0.05 * torch.randn(768, 512, generator=g)
        torch.save({"state_dict": sd}, cache / f"{name}_pretrain.pth.tar")

    def hub_load(repo: str, model: str, *args: object, **kwargs: object) -> torch.nn.Module:
        assert (repo, model) == ("facebookresearch/dino:main", "dino_vitb16")
        m = dvit.vit_base(patch_size=16)
        m.load_state_dict(torch.load(cache / "checkpoints" / "dino_vitbase16_pretrain.pth", weights_only=True))
        return m

    monkeypatch.setattr(torch.hub, "load", hub_load)  # dreamsim's only download besides the zip
    base = PerceptualModel(**dreamsim_args["model_config"]["ensemble"], device="cpu", load_dir=str(cache),
                           normalize_embeds=True)
    config = LoraConfig(r=16, lora_alpha=8, lora_dropout=0.3, bias="none", target_modules=["qkv"])
    peft_model = get_peft_model(base, config)
    with torch.no_grad():
        for k, p in peft_model.named_parameters():
            if "lora_" in k:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    peft_model.save_pretrained(str(cache / "lora-save"))
    saved = next(p.parent for p in (cache / "lora-save").rglob("adapter_config.json"))
    saved.rename(cache / "ensemble_lora")
    return cache


@pytest.mark.slow
@pytest.mark.fidelity
def test_dreamsim_matches_the_dreamsim_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dreamsim.dreamsim() (ensemble, LoRA, normalize_embeds) on a random release == the suite's
    DreamSim from the same folder: distances and embeddings to 1e-5 relative at 224x224 (the
    official input) and at 160x208 (position embeddings interpolated)."""
    pytest.importorskip("dreamsim")
    pytest.importorskip("peft")
    import dreamsim

    cache = _dreamsim_release(tmp_path, monkeypatch)
    theirs, _ = dreamsim.dreamsim(pretrained=True, device="cpu", cache_dir=str(cache))
    ours = create_model("dreamsim", weights=cache)
    assert ours.protocol["input_size"] == "224x224"
    for seed, (h, w) in enumerate([(224, 224), (160, 208)]):
        if (h, w) != (224, 224):
            ours.input_size = None  # the protocol input_size="native", without a second build
        x, r = _batch(seed, 2, h, w), _batch(seed + 50, 2, h, w)
        with torch.no_grad():
            e_theirs = theirs.embed(torch.cat([x, r]))
            d_theirs = 1 - torch.nn.functional.cosine_similarity(e_theirs[:2], e_theirs[2:], dim=-1)
            torch.testing.assert_close(d_theirs, theirs(x, r).flatten())
            feats = ours.features(x, r)
            assert _rel_err(ours.head(feats), d_theirs) < 1e-5
            assert _rel_err(feats.reshape(2, 2, -1).transpose(0, 1).reshape(4, -1), e_theirs) < 1e-5


def test_reference_images_are_deterministic() -> None:
    a, b = images(3, 2, 20, 30), images(3, 2, 20, 30)
    assert np.array_equal(a, b) and a.dtype == np.uint8 and not np.array_equal(a[0], a[1])
