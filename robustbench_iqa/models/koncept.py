"""KonCept512 (Hosu et al., "KonIQ-10k: An Ecologically Valid Database for Deep
Learning of Blind Image Quality Assessment", IEEE TIP 2020), rebuilt in PyTorch.

KonCept512 is not part of pyiqa.  The published model (``koncept.models.Koncept512`` of the
``koncept``/``kuti`` packages, trained in ``subpic/koniq``'s notebook) is Keras'
Inception-ResNet-v2 trunk without top, global average pooling (b(x), D = 1536), and the head
``kuti.applications.fc_layers(fc_sizes=[2048, 1024, 256, 1], dropout_rates=[0.25, 0.25, 0.5, 0],
batch_norm=2)``: three blocks ``Dense -> ReLU -> BatchNormalization -> Dropout`` and a linear
output.  Keras' BatchNormalization uses eps = 1e-3 (trunk and head alike).  The trunk here is
timm's ``inception_resnet_v2`` (the same graph: stride-2 convolutions unpadded, average pools
that do not count padding, residual scales 0.17 / 0.1 / 0.2 and 1.0 for the last block).
Inputs are scaled to [-1, 1] (Keras' Inception preprocessing), done here from [0, 1].

**Training and score scale.**  It was trained with MSE on the ``MOS`` column of
``koniq10k_distributions_sets.csv`` (a 0-100 rescaling of the 1-5 opinion scores; 77.38 for
``10004473376.jpg``), on the 512x384 release of the images (input 384 x 512, not resized).
So its score is on the 0-100 scale, higher = better, and the protocol resizes to 384 x 512.

**Weights.**  ``weights=PATH`` takes the published Keras file ``koncep512-trained-model.h5``
(read with h5py, no TensorFlow; see :func:`koncept_state_from_keras`) or a state dict of this
adapter (``.safetensors``/``.pt``, e.g. written by ``robustbench-iqa weights convert``).
``weights="pretrained-base"`` loads timm's ImageNet trunk with a random head; there is no
PyTorch download of the trained model, so ``"pretrained"`` raises.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robustbench_iqa.errors import InputError, WeightsUnavailableError
from robustbench_iqa.models.base import IQAModel, Mode
from robustbench_iqa.models.keras_h5 import KerasLayer, read_keras_h5
from robustbench_iqa.models.protocol import Size, parse_size, resize_to, size_text
from robustbench_iqa.models.weights import (
    WeightsKind,
    WeightsSource,
    building,
    is_hdf5,
    load_state_into,
    parse_weights,
    read_state_dict,
    weights_file,
)

KONCEPT_KERAS_URL = "http://datasets.vqa.mmsp-kn.de/archives/koncep512-trained-model.h5"
KONCEPT_FILE = "koncep512-trained-model.h5"
TRUNK_DIM = 1536
HIDDEN: tuple[int, ...] = (2048, 1024, 256)
DROPOUT: tuple[float, ...] = (0.25, 0.25, 0.5)
KERAS_BN_EPS = 1e-3
MIN_SIZE = 75  # smallest input the Inception-ResNet-v2 stem accepts
TRAINING_SIZE: tuple[int, int] = (384, 512)
SCORE_RANGE: tuple[float, float] = (0.0, 100.0)


def koncept_head(in_dim: int = TRUNK_DIM) -> nn.Sequential:
    """The KonCept512 head: (Linear -> ReLU -> BatchNorm(eps 1e-3) -> Dropout) x 3 -> Linear."""
    layers: list[nn.Module] = []
    d = in_dim
    for width, p in zip(HIDDEN, DROPOUT, strict=True):
        layers += [nn.Linear(d, width), nn.ReLU(), nn.BatchNorm1d(width, eps=KERAS_BN_EPS), nn.Dropout(p)]
        d = width
    layers.append(nn.Linear(d, 1))
    return nn.Sequential(*layers)


class KonCept512(IQAModel):
    """NR model; higher = better; score on the 0-100 ``MOS`` scale it was trained on.

    ``input_size``: the protocol's working size (default 384 x 512, the training size); an
    input of another size is resized (bilinear, antialiased) inside :meth:`features`.
    ``None`` scores the image at its own size.
    """

    name = "koncept"
    mode = Mode.NR
    lower_better = False
    score_range = SCORE_RANGE

    def __init__(self, *, imagenet_trunk: bool = False, input_size: Size = TRAINING_SIZE) -> None:
        super().__init__()
        import timm

        self.input_size = parse_size(input_size, what="koncept input_size")
        if self.input_size is not None and min(self.input_size) < MIN_SIZE:
            raise InputError(f"koncept input_size must be at least {MIN_SIZE}x{MIN_SIZE}, got {self.input_size}")
        with building(self.name, backbone=imagenet_trunk):
            self.trunk = timm.create_model(
                "inception_resnet_v2", pretrained=imagenet_trunk, num_classes=0, global_pool="avg"
            )
        self.fc = koncept_head(TRUNK_DIM)
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def protocol(self) -> dict[str, object]:
        return {"input_size": size_text(self.input_size)}

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        x, _ = self.check_inputs(x, ref)
        x = resize_to(x, self.input_size)
        if min(x.shape[-2:]) < MIN_SIZE:
            raise InputError(
                f"KonCept512 needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels, got {tuple(x.shape[-2:])}"
            )
        return self.trunk(x * 2 - 1)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(feats).squeeze(-1)


# ------------------------------------------------------------------ Keras -> PyTorch
_AUTO_CONV = re.compile(r"^conv2d(?:_(\d+))?$")
_AUTO_BN = re.compile(r"^batch_normalization(?:_(\d+))?$")


def _auto_sorted(layers: dict[str, KerasLayer], pattern: re.Pattern[str]) -> list[KerasLayer]:
    """Keras' auto-named layers (``conv2d``, ``conv2d_1``, ...) in creation order."""
    found = [(int(m.group(1) or 0), lay) for n, lay in layers.items() if (m := pattern.match(n))]
    return [lay for _, lay in sorted(found, key=lambda t: t[0])]


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _conv(state: dict[str, torch.Tensor], prefix: str, layer: KerasLayer) -> None:
    w = layer.weights.get("kernel")
    if w is None or w.ndim != 4:
        raise InputError(f"Keras layer {layer.name!r} is not a 2-D convolution (weights {list(layer.weights)})")
    state[f"{prefix}.weight"] = _t(w.transpose(3, 2, 0, 1))
    if "bias" in layer.weights:
        state[f"{prefix}.bias"] = _t(layer.weights["bias"])


def _batchnorm(state: dict[str, torch.Tensor], prefix: str, layer: KerasLayer) -> None:
    w = layer.weights
    missing = [k for k in ("beta", "moving_mean", "moving_variance") if k not in w]
    if missing:
        raise InputError(f"Keras layer {layer.name!r} is not a BatchNormalization (lacks {missing})")
    state[f"{prefix}.weight"] = _t(w["gamma"]) if "gamma" in w else torch.ones(w["beta"].shape)
    state[f"{prefix}.bias"] = _t(w["beta"])
    state[f"{prefix}.running_mean"] = _t(w["moving_mean"])
    state[f"{prefix}.running_var"] = _t(w["moving_variance"])


def _dense(state: dict[str, torch.Tensor], prefix: str, layer: KerasLayer) -> None:
    w = layer.weights.get("kernel")
    if w is None or w.ndim != 2:
        raise InputError(f"Keras layer {layer.name!r} is not a Dense layer (weights {list(layer.weights)})")
    state[f"{prefix}.weight"] = _t(w.T)
    state[f"{prefix}.bias"] = _t(layer.weights["bias"])


def koncept_state_from_keras(model: KonCept512, layers: list[KerasLayer]) -> dict[str, torch.Tensor]:
    """The state dict of :class:`KonCept512` from the Keras layers of the published ``.h5``.

    Keras' Inception-ResNet-v2 names its ``conv -> BatchNorm`` pairs automatically
    (``conv2d_<k>``, ``batch_normalization_<k>``, numbered in creation order, from any offset);
    they are matched in that order to timm's ``ConvNormAct`` modules, which are defined in the
    same order (stem, then each block's branches left to right).  The residual blocks' output
    convolutions (``block35_<i>_conv``, ``block17_<i>_conv``, ``block8_<i>_conv``), the final
    ``conv_7b``/``conv_7b_bn`` and the head (``fc_fc<i>``, ``fc_bn<i>``, ``fc_out``) are matched by
    name.  Every shape is checked when the state is loaded.
    """
    by_name = {lay.name: lay for lay in layers}
    state: dict[str, torch.Tensor] = {}
    conv_norm = [n[: -len(".conv")] for n, m in model.trunk.named_modules()
                 if n.endswith(".conv") and isinstance(m, nn.Conv2d) and n != "conv2d_7b.conv"]
    convs, bns = _auto_sorted(by_name, _AUTO_CONV), _auto_sorted(by_name, _AUTO_BN)
    if len(convs) != len(conv_norm) or len(bns) != len(conv_norm):
        raise InputError(
            f"the Keras file does not hold KonCept512's Inception-ResNet-v2: {len(convs)} auto-named "
            f"convolutions and {len(bns)} batch normalisations, expected {len(conv_norm)} each"
        )
    for unit, conv, bn in zip(conv_norm, convs, bns, strict=True):
        _conv(state, f"trunk.{unit}.conv", conv)
        _batchnorm(state, f"trunk.{unit}.bn", bn)
    blocks = ([(f"repeat.{i}", f"block35_{i + 1}_conv") for i in range(10)]
              + [(f"repeat_1.{i}", f"block17_{i + 1}_conv") for i in range(20)]
              + [(f"repeat_2.{i}", f"block8_{i + 1}_conv") for i in range(9)]
              + [("block8", "block8_10_conv")])
    named = [(f"trunk.{unit}.conv2d", key, _conv) for unit, key in blocks]
    named += [("trunk.conv2d_7b.conv", "conv_7b", _conv), ("trunk.conv2d_7b.bn", "conv_7b_bn", _batchnorm)]
    named += [(f"fc.{4 * i}", f"fc_fc{i}", _dense) for i in range(3)]
    named += [(f"fc.{4 * i + 2}", f"fc_bn{i}", _batchnorm) for i in range(3)]
    named += [("fc.12", "fc_out", _dense)]
    absent = [key for _, key, _ in named if key not in by_name]
    if absent:
        raise InputError(f"the Keras file lacks KonCept512 layer(s) {absent[:4]}"
                         f"{' ...' if len(absent) > 4 else ''} (has e.g. {list(by_name)[-4:]})")
    for prefix, key, convert in named:
        convert(state, prefix, by_name[key])
    return state


# -------------------------------------------------------------------------- factory
def create_koncept(weights: str | Path | None = None, *, input_size: Size = TRAINING_SIZE) -> KonCept512:
    """Build KonCept512 with the suite's ``weights`` semantics (see :mod:`.weights`)."""
    kind, path = parse_weights(weights)
    if kind is WeightsKind.PRETRAINED:
        raise WeightsUnavailableError(
            f"KonCept512's published weights are the Keras file {KONCEPT_FILE} ({KONCEPT_KERAS_URL}), "
            "with no PyTorch download; pass that file as weights=PATH (read with h5py), "
            "or use weights='pretrained-base' for the ImageNet trunk with a random head"
        )
    model = KonCept512(imagenet_trunk=kind is WeightsKind.PRETRAINED_BASE, input_size=input_size)
    if path is None:
        model.weights_source = WeightsSource(kind, "timm ImageNet trunk, random head" if
                                             kind is WeightsKind.PRETRAINED_BASE else "random initialisation")
        return model
    what = "the KonCept512 adapter (trunk.*, fc.*)"
    if is_hdf5(path):
        layers, attrs = read_keras_h5(path)
        state = koncept_state_from_keras(model, layers)
        fmt = f"Keras .h5 (keras {attrs.get('keras_version') or '?'}), converted with h5py"
    else:
        state = read_state_dict(path)
        fmt = "state dict of the KonCept512 adapter"
    missing = load_state_into(model, state, what=what, source=str(path))
    if missing:
        raise InputError(f"checkpoint {path} does not match {what}: {len(missing)} missing keys, "
                         f"e.g. {missing[:3]}")
    model.weights_source = WeightsSource(kind, fmt, (weights_file("KonCept512 weights", path),))
    return model
