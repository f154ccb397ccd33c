"""ST-LPIPS (Ghildyal & Liu, ECCV 2022, "Shift-tolerant perceptual similarity metric"), a real
trained network, offline: ``st-lpips-alex``, ``st-lpips-vgg`` (FR) and ``st-lpips-alex-nr`` (NR).

The PyPI package ``stlpips-pytorch`` ships the complete trained networks (trunk and linear layers
trained together on the BAPPS 2AFC human judgments): ``stlpips_pytorch/weights/vST0.0/
{alex,vgg}_shift_tolerant.pth``.  They are read here with ``torch.load(weights_only=True)`` into a
network rebuilt from plain layers (the models never import the package: it imports ``IPython`` and
``torchsummary`` at import time without declaring them); the tests check that the distance equals
the official ``stlpips_pytorch.stlpips.LPIPS`` forward.

Trunk phi (the "shift_tolerant" variant), on images x in [0, 1]:

* input scaling ``((2x - 1) - shift) / scale`` (LPIPS' ScalingLayer), written as a fixed 1x1
  ``Conv2d`` (weight diag(2/scale), bias (-1 - shift)/scale) so that the bounds read it;
* AlexNet: conv11 (stride 1) -> BlurPool -> ReLU | MaxPool3 (stride 1) -> BlurPool -> conv5 -> ReLU |
  MaxPool3 -> BlurPool -> conv3 -> ReLU | conv3 -> ReLU | conv3 -> ReLU, the five stage outputs
  phi_1..phi_5 with C = 64, 192, 384, 256, 256 channels;
* VGG-16: its 13 conv3 + ReLU layers, each 2x2 max pooling at stride 1 followed by a BlurPool,
  stages relu1_2 .. relu5_3 with C = 64, 128, 256, 512, 512;
* BlurPool: :class:`~robustbench_iqa.certify.layers.BlurPool2d` (3x3 binomial filter, stride 2,
  reflect padding of 2 on every side, the package's ``pad_more=True``).

Full-reference model (a distance, lower = better).  The official distance is
``d(x, r) = sum_k mean_hw w_k . (n(phi_k(x)) - n(phi_k(r)))^2`` with n the channel normalisation
``u / (||u||_2 + 1e-10)`` (:class:`~robustbench_iqa.certify.layers.ChannelNorm`) and w_k the 1x1
"lin" weights.  Because w_k is linear and the spatial mean commutes with it, the FS-IQA backbone is

    b(x, r) = [ mean_hw (n(phi_k(x)) - n(phi_k(r)))_c^2 ]_{k, c}     (D = sum_k C_k: 1152 / 1472)

a fixed-size vector at any image size, and the head is exactly linear: ``d = w . b``.

No-reference model ``st-lpips-alex-nr`` (higher = better): the same frozen AlexNet trunk with
``b(x) = [ mean_hw phi_k(x)_c ]_{k, c}`` (D = 1152; only convolutions, ReLU, max and blur pooling
and a spatial mean), and as its own head a ridge regression ``(b - m) / s . w + c`` fitted on the
embedded ``default`` dataset's weak labels (``scripts/train_stlpips_nr.py``, shipped as
``weights/st-lpips-alex-nr-head.safetensors``).  FS-IQA's FTN and scorer for it are trained with
``robustbench-iqa train`` and shipped as ``weights/fs-iqa-st-lpips-alex-nr-sigma*.safetensors``.

Certified bounds: both models compute b through their ``feature_map``, a
:class:`~robustbench_iqa.certify.tapped.TappedFeatures` over the same stages (the input scaling as
its shift and scale; FR: channel normalisation and ``"meansq"``; NR: no normalisation and
``"mean"``), so FS-IQA gets the certified global radius ``eps_x_lipschitz`` from
:meth:`TappedFeatures.lipschitz_bound` and, on request, the certified local radius ``eps_x_local``
from its local deviation bound; a layer the machinery cannot bound raises
:class:`~robustbench_iqa.errors.BoundUnavailableError` naming it.
"""

from __future__ import annotations

import importlib.util
import re
from collections import OrderedDict
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from robustbench_iqa.errors import InputError
from robustbench_iqa.lipschitz.layers import BlurPool2d
from robustbench_iqa.lipschitz.tapped import TappedFeatures
from robustbench_iqa.models.base import IQAModel, Mode
from robustbench_iqa.models.registry import register_model
from robustbench_iqa.models.weights import WeightsKind, WeightsSource, read_state_dict, weights_file

if TYPE_CHECKING:
    from robustbench_iqa.lipschitz.composition import LipschitzBound

NETS = ("alex", "vgg")
CHANNELS: dict[str, tuple[int, ...]] = {"alex": (64, 192, 384, 256, 256), "vgg": (64, 128, 256, 512, 512)}
NORM_EPS = 1e-10
"""LPIPS' channel normalisation eps (added to the norm)."""
"""Lip of v -> v*v (elementwise) on pixel vectors v = n(a) - n(r) with |v_c| <= 2: |v_c + v'_c| <= 4."""
PACKAGE = "stlpips-pytorch"


def _blur(channels: int) -> BlurPool2d:
    return BlurPool2d(channels=channels, filt_size=3, stride=2, pad=(2, 2, 2, 2), pad_mode="reflect")


def _stage(layers: list[tuple[int, nn.Module]]) -> nn.Sequential:
    """A stage with the official layer indices as names (so state-dict keys map one to one)."""
    return nn.Sequential(OrderedDict((str(i), m) for i, m in layers))


def alex_stages() -> list[nn.Sequential]:
    """The five stages of the shift-tolerant AlexNet (``invariant_networks.alexnet``)."""
    return [
        _stage([(0, nn.Conv2d(3, 64, 11, stride=1, padding=2)), (1, _blur(64)), (2, nn.ReLU())]),
        _stage([(3, nn.MaxPool2d(3, stride=1)), (4, _blur(64)), (5, nn.Conv2d(64, 192, 5, padding=2)),
                (6, nn.ReLU())]),
        _stage([(7, nn.MaxPool2d(3, stride=1)), (8, _blur(192)), (9, nn.Conv2d(192, 384, 3, padding=1)),
                (10, nn.ReLU())]),
        _stage([(11, nn.Conv2d(384, 256, 3, padding=1)), (12, nn.ReLU())]),
        _stage([(13, nn.Conv2d(256, 256, 3, padding=1)), (14, nn.ReLU())]),
    ]


def vgg_stages() -> list[nn.Sequential]:
    """The five stages of the shift-tolerant VGG-16 (``models_lpf.vgg.vgg16(pad_more=True)``)."""
    cfg: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
    layers: list[tuple[int, nn.Module]] = []
    c_in = 3
    for v in cfg:
        if v == "M":
            layers += [(len(layers), nn.MaxPool2d(2, stride=1)), (len(layers) + 1, _blur(c_in))]
        else:
            assert isinstance(v, int)
            layers += [(len(layers), nn.Conv2d(c_in, v, 3, padding=1)), (len(layers) + 1, nn.ReLU())]
            c_in = v
    cuts = (0, 4, 10, 18, 26, len(layers))
    return [_stage(layers[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


class STLPIPSTrunk(nn.Module):
    """Input scaling (a fixed 1x1 convolution) then the five stages; returns every stage's output."""

    def __init__(self, net: str) -> None:
        super().__init__()
        if net not in NETS:
            raise InputError(f"ST-LPIPS trunk must be one of {NETS}, got {net!r}")
        self.net = net
        self.scaling = nn.Conv2d(3, 3, 1)
        self.stages = nn.ModuleList(alex_stages() if net == "alex" else vgg_stages())

    def set_scaling(self, shift: torch.Tensor, scale: torch.Tensor) -> None:
        """x in [0, 1] -> ((2x - 1) - shift) / scale, as the 1x1 convolution's weight and bias."""
        shift, scale = shift.flatten().double(), scale.flatten().double()
        with torch.no_grad():
            self.scaling.weight.copy_(torch.diag(2.0 / scale)[:, :, None, None].float())
            bias = self.scaling.bias
            assert bias is not None
            bias.copy_(((-1.0 - shift) / scale).float())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.scaling(x)
        outs = []
        for stage in self.stages:
            h = stage(h)
            outs.append(h)
        return outs



# -------------------------------------------------------------------------- weights
def import_official(module: str = "stlpips_pytorch.stlpips") -> Any:
    """Import a module of the official ``stlpips-pytorch`` package (for equality checks and the
    benchmark's peer row; the models here never use it).

    The package imports ``IPython`` and ``torchsummary`` at import time without declaring them
    (unused for scoring): stubs stand in for the import only and are removed from ``sys.modules``
    afterwards (a stub left there breaks matplotlib, which reads ``IPython.version_info``).
    """
    import importlib
    import sys
    import types

    added = [name for name in ("IPython", "torchsummary") if name not in sys.modules]
    for name in added:
        stub = types.ModuleType(name)
        stub.embed = stub.summary = lambda *a, **k: None  # type: ignore[attr-defined]
        sys.modules[name] = stub
    try:
        return importlib.import_module(module)
    finally:
        for name in added:
            sys.modules.pop(name, None)


def official_lpips(net: str) -> Any:
    """The official ``stlpips_pytorch.stlpips.LPIPS(net=net, variant='shift_tolerant')`` in eval mode,
    with its packaged weights (:func:`import_official`)."""
    lpips = import_official().LPIPS
    return lpips(pretrained=True, net=net, variant="shift_tolerant", verbose=False).eval()


def package_weights(net: str) -> Path:
    """The trained ``{net}_shift_tolerant.pth`` shipped by the installed ``stlpips-pytorch`` package."""
    if importlib.util.find_spec("stlpips_pytorch") is None:
        raise InputError(f"st-lpips-{net} reads its trained weights from the {PACKAGE} package, which is not "
                         f"installed: pip install {PACKAGE} (or pass weights=PATH to its .pth file)")
    path = Path(str(resources.files("stlpips_pytorch") / "weights" / "vST0.0" / f"{net}_shift_tolerant.pth"))
    if not path.is_file():
        raise InputError(f"the installed {PACKAGE} package has no {path.name} at {path}; pass weights=PATH")
    return path


def _official_to_ours(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """Map the official keys (``net.slice{k}.{i}.*``, ``lin{k}.model.1.weight``) to the trunk's."""
    trunk, lins = {}, {}
    for key, value in state.items():
        m = re.fullmatch(r"(?:net\.)?slice(\d)\.(\d+)\.(weight|bias|filt)", key)
        if m:
            trunk[f"stages.{int(m.group(1)) - 1}.{m.group(2)}.{m.group(3)}"] = value
            continue
        m = re.fullmatch(r"lin(\d)\.model\.\d\.weight", key)
        if m:
            lins[int(m.group(1))] = value.flatten()
    return trunk, [lins[k] for k in sorted(lins)]


def load_stlpips(trunk: STLPIPSTrunk, path: Path) -> list[torch.Tensor]:
    """Load the official checkpoint at ``path`` into ``trunk`` strictly; return the 5 lin weight vectors."""
    state = read_state_dict(path)
    mapped, lins = _official_to_ours(state)
    if "scaling_layer.shift" not in state or "scaling_layer.scale" not in state:
        raise InputError(f"{path} is not an ST-LPIPS checkpoint: it has no scaling_layer.shift/scale")
    own = {k: v for k, v in trunk.state_dict().items() if not k.startswith("scaling.")}
    missing = sorted(set(own) - set(mapped))
    unexpected = sorted(set(mapped) - set(own))
    shapes = [k for k in own if k in mapped and tuple(own[k].shape) != tuple(mapped[k].shape)]
    channels = CHANNELS[trunk.net]
    lin_ok = len(lins) == len(channels) and all(w.numel() == c for w, c in zip(lins, channels, strict=False))
    if missing or unexpected or shapes or not lin_ok:
        raise InputError(f"{path} does not fit the ST-LPIPS {trunk.net} network: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}, mis-shaped {shapes[:3]}, lin layers ok: {lin_ok}")
    trunk.load_state_dict({**mapped, **{k: v for k, v in trunk.state_dict().items() if k.startswith("scaling.")}},
                          strict=True)
    trunk.set_scaling(state["scaling_layer.shift"], state["scaling_layer.scale"])
    return lins


def _trunk_and_source(net: str, weights: str | Path | None) -> tuple[STLPIPSTrunk, list[torch.Tensor], WeightsSource]:
    if weights is None or weights == "pretrained":
        path, kind = package_weights(net), WeightsKind.PRETRAINED
        fmt = f"the official ST-LPIPS checkpoint shipped by the installed {PACKAGE} package"
    elif weights == "random":
        raise InputError(f"st-lpips-{net} is a trained metric; it has no random version (weights=None reads "
                         f"the {PACKAGE} package's file)")
    else:
        path, kind = Path(weights).expanduser(), WeightsKind.PATH
        fmt = "an official ST-LPIPS checkpoint (torch.load weights_only=True, or safetensors)"
    trunk = STLPIPSTrunk(net)
    lins = load_stlpips(trunk, path)
    return trunk, lins, WeightsSource(kind, fmt, (weights_file(f"ST-LPIPS {net} trunk + lin", path),))


# --------------------------------------------------------------------------- bounds
def _size(input_size: tuple[int, int] | None) -> tuple[int, int]:
    if input_size is None:
        raise InputError("the image size (H, W) is needed for the Lipschitz bound of an ST-LPIPS model")
    return int(input_size[0]), int(input_size[1])


class _STLPIPSBase(IQAModel):
    score_range = (0.0, 1.0)

    def __init__(self, net: str, trunk: STLPIPSTrunk) -> None:
        super().__init__()
        self.arch = net
        self.trunk = trunk
        self.feature_dim = sum(CHANNELS[net])
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        # h = w x + c (the 1x1 scaling convolution, diagonal) is (x - shift') / scale' with
        # scale' = 1 / w and shift' = -c / w: the same stages, read by the bound machinery.
        w = trunk.scaling.weight.detach().double().diagonal().flatten()
        bias = trunk.scaling.bias
        c = bias.detach().double() if bias is not None else torch.zeros_like(w)
        fr = self.mode == Mode.FR
        self.feature_map = TappedFeatures(
            slices=list(trunk.stages), shift=(-c / w).tolist(), scale=(1.0 / w).tolist(),
            norm_eps=NORM_EPS if fr else None, reduction="meansq" if fr else "mean")

    def lipschitz_bound(self, input_size: tuple[int, int] | None) -> LipschitzBound:
        """Certified Lip(b) in x (ref fixed): :meth:`TappedFeatures.lipschitz_bound` of
        ``feature_map`` (the stages concatenated, sqrt(sum_k L_k^2))."""
        return self.feature_map.lipschitz_bound(_size(input_size))


class STLPIPS(_STLPIPSBase):
    """ST-LPIPS distance (FR, lower = better): b = per-channel mean squared normalised differences,
    head = the official lin weights (module docstring)."""

    mode = Mode.FR
    lower_better = True
    lin: torch.Tensor

    def __init__(self, net: str, trunk: STLPIPSTrunk, lins: list[torch.Tensor]) -> None:
        super().__init__(net, trunk)
        self.name = f"st-lpips-{net}"
        self.register_buffer("lin", torch.cat([w.flatten().float() for w in lins]))

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """``[mean_hw (n(phi_k(x)) - n(phi_k(ref)))_c^2]_{k,c}``: (B, sum_k C_k)."""
        if ref is None:
            raise InputError("this is a full-reference model: a reference image `ref` is required")
        if ref.shape[0] == 1 and x.shape[0] > 1:
            ref = ref.expand(x.shape[0], -1, -1, -1)
        if ref.shape != x.shape:
            raise InputError(f"x and ref must have the same shape, got {tuple(x.shape)} and {tuple(ref.shape)}")
        return self.feature_map(x, ref.to(x.dtype))

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return feats @ self.lin.to(feats.dtype)

class STLPIPSNR(_STLPIPSBase):
    """No-reference model on the frozen ST-LPIPS trunk: b = per-channel spatial means of the five
    stages; head = a ridge regression fitted on the embedded dataset (module docstring)."""

    mode = Mode.NR
    lower_better = False
    feat_mean: torch.Tensor
    feat_std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def __init__(self, net: str, trunk: STLPIPSTrunk) -> None:
        super().__init__(net, trunk)
        self.name = f"st-lpips-{net}-nr"
        d = self.feature_dim
        self.register_buffer("feat_mean", torch.zeros(d))
        self.register_buffer("feat_std", torch.ones(d))
        self.register_buffer("weight", torch.zeros(d))
        self.register_buffer("bias", torch.zeros(()))

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """``[mean_hw phi_k(x)_c]_{k,c}``: (B, sum_k C_k)."""
        if ref is not None:
            raise InputError("this is a no-reference model: do not pass a reference image")
        return self.feature_map(x)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        z = (feats - self.feat_mean.to(feats.dtype)) / self.feat_std.to(feats.dtype)
        return z @ self.weight.to(feats.dtype) + self.bias.to(feats.dtype)

    def head_state(self) -> dict[str, torch.Tensor]:
        """The fitted head (what ``weights/st-lpips-alex-nr-head.safetensors`` holds)."""
        return {k: getattr(self, k).detach().cpu().contiguous() for k in ("feat_mean", "feat_std", "weight", "bias")}

    def load_head(self, path: Path) -> None:
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as exc:
            raise InputError(f"cannot read the head file {path}: {str(exc).splitlines()[0]}") from None
        own = self.head_state()
        if set(state) != set(own) or any(state[k].shape != own[k].shape for k in own):
            raise InputError(f"{path} is not a head of {self.name}: keys {sorted(state)}")
        for k, v in state.items():
            getattr(self, k).copy_(v)


def nr_head_file(net: str) -> Path:
    return Path(str(resources.files("robustbench_iqa") / "weights" / f"st-lpips-{net}-nr-head.safetensors"))


def create_stlpips(net: str, *, weights: str | Path | None = None) -> STLPIPS:
    """The ST-LPIPS distance with the official trained weights (``weights=None``: the package's file)."""
    trunk, lins, source = _trunk_and_source(net, weights)
    model = STLPIPS(net, trunk, lins)
    model.weights_source = source
    return model


def create_stlpips_nr(net: str, *, weights: str | Path | None = None, head: str | Path | None = None) -> STLPIPSNR:
    """The NR model on the frozen ST-LPIPS trunk; ``head``: its ridge head file (None: the shipped one)."""
    trunk, _, source = _trunk_and_source(net, weights)
    model = STLPIPSNR(net, trunk)
    head_path = nr_head_file(net) if head is None else Path(head).expanduser()
    if not head_path.is_file():
        raise InputError(f"head file of st-lpips-{net}-nr not found: {head_path}")
    model.load_head(head_path)
    model.weights_source = WeightsSource(source.kind, source.format + " + a ridge head fitted on the embedded dataset",
                                         (*source.files, weights_file("ridge head", head_path)))
    return model


@register_model("st-lpips-alex", mode="fr", lower_better=True, score_range=(0.0, 1.0),
                description="ST-LPIPS, shift-tolerant AlexNet (trained, from the stlpips-pytorch package; FR distance)")
def st_lpips_alex(*, weights: str | Path | None = None, device: torch.device | str = "cpu") -> IQAModel:
    return create_stlpips("alex", weights=weights).to(device).eval()


@register_model("st-lpips-vgg", mode="fr", lower_better=True, score_range=(0.0, 1.0),
                description="ST-LPIPS, shift-tolerant VGG-16 (trained, from the stlpips-pytorch package; FR distance)")
def st_lpips_vgg(*, weights: str | Path | None = None, device: torch.device | str = "cpu") -> IQAModel:
    return create_stlpips("vgg", weights=weights).to(device).eval()


@register_model("st-lpips-alex-nr", mode="nr", lower_better=False, score_range=(0.0, 1.0),
                description="NR: frozen ST-LPIPS AlexNet trunk, pooled stages -> ridge head (embedded weak labels)")
def st_lpips_alex_nr(*, weights: str | Path | None = None, device: torch.device | str = "cpu",
                     head: str | Path | None = None) -> IQAModel:
    return create_stlpips_nr("alex", weights=weights, head=head).to(device).eval()
