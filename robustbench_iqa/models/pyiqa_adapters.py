"""Adapters that split pyiqa's architectures into backbone b(x) and published head.

FS-IQA smooths the output of the IQA backbone, ``f_init = b(x)`` (FS-IQA paper,
Sec. "Feature Preparation Pipeline"), so each adapter cuts its network where
the published head begins, with ``head(features(x, ref)) == net(x, ref)`` up to
float rounding (the tests check this against pyiqa's own forward):

* DBCNN (Zhang et al. 2020): b(x) = the l2-normalised, signed-sqrt bilinear pool
  of VGG-16 and SCNN features (D = 512 * 128); head = the final linear layer.
* HyperIQA (Su et al. 2020): b(x) = [multi-scale local-distortion features
  (224), hyper-network input map (112 x 7 x 7)] per 224 x 224 crop; head = the
  hyper network that generates the target network's weights, the target network,
  and the mean over crops.
* LPIPS (Zhang et al. 2018, Eq. 1-3): ``d = sum_l w_l . mean_hw (n(y_l) - n(r_l))^2``;
  because the 1x1 "lin" layers are linear, b(x, ref) = the per-channel squared
  differences of unit-normalised trunk features, averaged over space
  (D = sum_l C_l); head = the dot product with the lin weights.
* DISTS (Ding et al. 2020, Eq. 8-10): b(x, ref) = the per-channel structure and
  texture similarities S1, S2 of all stages (D = 2 * 1475); head =
  ``1 - (alpha . S1 + beta . S2) / (sum alpha + sum beta)``.

Plus :class:`PyiqaMetric` for ``pyiqa:<metric>[@layer[:input]]``: any pyiqa metric,
with the feature layer chosen by a forward hook.  Inputs are RGB in [0, 1]; the
normalisation each network expects happens inside (as in pyiqa).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import IQAModel, Mode
from robustbench_iqa.models.weights import (
    WeightsKind,
    building,
    load_state_into,
    parse_weights,
    read_state_dict,
)


# ---------------------------------------------------------------- pyiqa configs
def pyiqa_config(metric: str) -> dict[str, Any]:
    """pyiqa's ``DEFAULT_CONFIGS[metric]`` (metric options and metadata)."""
    from pyiqa.default_model_configs import DEFAULT_CONFIGS

    if metric not in DEFAULT_CONFIGS:
        close = sorted(k for k in DEFAULT_CONFIGS if k.startswith(metric[:3]))[:8]
        raise InputError(f"unknown pyiqa metric {metric!r}; similar: {', '.join(close) or 'none'}")
    return DEFAULT_CONFIGS[metric]


def parse_score_range(text: str | None) -> tuple[float, float]:
    """Parse pyiqa's score range strings: ``'0, 1'``, ``'~0, ~1'``, ``'0, ~'`` (open end = inf)."""
    if not text:
        return (0.0, 1.0)
    first = text.split(";")[0].split(":")[-1]
    parts = [p.strip().lstrip("~").strip() for p in first.split(",")]
    if len(parts) != 2:
        return (0.0, 1.0)
    lo = float(parts[0]) if parts[0] else float("-inf")
    hi = float(parts[1]) if parts[1] else float("inf")
    return (lo, hi)


def build_pyiqa_net(
    metric: str,
    weights: str | Any | None,
    *,
    name: str,
    trunk_prefixes: tuple[str, ...] = (),
    **overrides: Any,
) -> nn.Module:
    """Build pyiqa's network for ``metric`` with the suite's ``weights`` semantics.

    ``trunk_prefixes``: parameter prefixes of the ImageNet trunk.  A local
    checkpoint that covers everything except the trunk (pyiqa's LPIPS and DISTS
    files hold only the calibrated head) gets the trunk from torchvision.
    """
    from pyiqa.archs import build_network

    opts = copy.deepcopy(dict(pyiqa_config(metric)["metric_opts"]))
    opts.update(overrides)
    kind, path = parse_weights(weights)

    def build(*, backbone: bool, checkpoint: bool) -> nn.Module:
        with building(name, backbone=backbone, checkpoint=checkpoint):
            return build_network(copy.deepcopy(opts))

    if kind is WeightsKind.RANDOM:
        return build(backbone=False, checkpoint=False)
    if kind is WeightsKind.PRETRAINED:
        return build(backbone=True, checkpoint=True)
    if kind is WeightsKind.PRETRAINED_BASE:
        return build(backbone=True, checkpoint=False)
    assert path is not None
    state = read_state_dict(path)
    net = build(backbone=False, checkpoint=False)
    what = f"the {name} architecture"
    missing = load_state_into(net, state, what=what, source=str(path), strip_prefixes=("net.",))
    if missing and trunk_prefixes and all(m.startswith(trunk_prefixes) for m in missing):
        net = build(backbone=True, checkpoint=False)
        load_state_into(net, state, what=what, source=str(path), strip_prefixes=("net.",))
    elif missing:
        raise InputError(
            f"checkpoint {path} does not match {what}: {len(missing)} missing keys, e.g. {missing[:3]}"
        )
    return net


class PyiqaAdapter(IQAModel):
    """Common part: holds pyiqa's network as ``self.net`` and its metadata."""

    net: Any  # pyiqa's architecture; its submodules are reached by name

    def __init__(self, net: nn.Module, metric: str, name: str) -> None:
        super().__init__()
        cfg = pyiqa_config(metric)
        self.net = net
        self.metric = metric
        self.name = name
        mode = cfg.get("metric_mode")
        if mode not in ("NR", "FR"):
            raise InputError(f"pyiqa metric {metric!r} is neither NR nor FR (mode {mode!r}); not supported")
        self.mode = Mode.NR if mode == "NR" else Mode.FR
        self.lower_better = bool(cfg.get("lower_better", False))
        self.score_range = parse_score_range(cfg.get("score_range"))
        for p in self.parameters():
            p.requires_grad_(False)


# ------------------------------------------------------------------------ DBCNN
class DBCNN(PyiqaAdapter):
    """DBCNN: bilinear pool of VGG-16 (authentic) x SCNN (synthetic) features -> linear."""

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        x, _ = self.check_inputs(x, ref)
        net = self.net
        h = net.preprocess(x)
        a, s = net.features1(h), net.features2(h)
        n, ca, hh, ww = a.shape
        if s.shape[-2:] != a.shape[-2:]:
            s = F.interpolate(s, (hh, ww), mode="bilinear", align_corners=True)
        pooled = torch.bmm(a.flatten(2), s.flatten(2).transpose(1, 2)) / (hh * ww)
        z = torch.sqrt(pooled.reshape(n, -1) + 1e-8)
        return F.normalize(z, dim=1)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net.fc(feats).squeeze(-1)


# --------------------------------------------------------------------- HyperIQA
_HYPER_PATCH = 224
_HYPER_GRID = 7  # spatial size of the hyper-network input map for a 224 patch


class HyperIQA(PyiqaAdapter):
    """HyperIQA with b = ResNet-50 + local-distortion-aware modules + hyper input reducer.

    ``num_crops = 1`` resizes the whole image to 224 x 224 (bilinear, antialiased);
    ``num_crops > 1`` takes pyiqa's uniform 224 x 224 crops (pyiqa evaluates 25)
    and the head averages the crop scores.  D = num_crops * (224 + 112 * 7 * 7).
    """

    def __init__(self, net: Any, metric: str, name: str, *, num_crops: int = 1) -> None:
        super().__init__(net, metric, name)
        if num_crops < 1:
            raise InputError(f"num_crops must be >= 1, got {num_crops}")
        self.num_crops = int(num_crops)
        self.lda_dim = sum(m[-1].out_features for m in net.lda_modules)
        self.hyper_channels = net.conv1[-2].out_channels

    def _patches(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_crops == 1:
            if x.shape[-2:] == (_HYPER_PATCH, _HYPER_PATCH):
                return x
            return F.interpolate(
                x, size=(_HYPER_PATCH, _HYPER_PATCH), mode="bilinear", align_corners=False, antialias=True
            )
        from pyiqa.archs.arch_util import uniform_crop

        return uniform_crop([x], _HYPER_PATCH, self.num_crops)

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        x, _ = self.check_inputs(x, ref)
        net = self.net
        patches = net.preprocess(self._patches(x))
        stages = net.base_model(patches)[1:]
        lda = torch.cat([m(f) for f, m in zip(stages, net.lda_modules)], dim=1)
        hyper_in = net.conv1(stages[-1])
        per_patch = torch.cat([lda, hyper_in.flatten(1)], dim=1)
        return per_patch.reshape(x.shape[0], -1)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        net = self.net
        b = feats.shape[0]
        per_patch = feats.reshape(b * self.num_crops, -1)
        h = per_patch[:, : self.lda_dim].unsqueeze(1)
        hyper_in = per_patch[:, self.lda_dim :].reshape(-1, self.hyper_channels, _HYPER_GRID, _HYPER_GRID)
        layers = len(net.fc_w_modules)
        for i in range(layers):
            w = net.fc_w_modules[i](hyper_in).reshape(hyper_in.shape[0], net.hyper_fc_channels[i], -1)
            bias = net.fc_b_modules[i](hyper_in).unsqueeze(1)
            h = torch.bmm(h, w.transpose(1, 2)) + bias
            if i < layers - 1:
                h = torch.sigmoid(h)
        return h.reshape(b, self.num_crops).mean(dim=1)


# ------------------------------------------------------------------------ LPIPS
class LPIPS(PyiqaAdapter):
    """LPIPS (v0.1): per-channel spatially averaged squared unit-feature differences."""

    def _lin_weights(self) -> torch.Tensor:
        return torch.cat([lin.model[-1].weight.flatten() for lin in self.net.lins])

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        x, ref = self.check_inputs(x, ref)
        assert ref is not None
        net = self.net
        pair = torch.cat([x, ref]) * 2 - 1
        if net.version == "0.1":
            pair = net.scaling_layer(pair)
        outs = net.net(pair)
        b = x.shape[0]
        per_layer = []
        for o in outs:
            u = o / (o.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            per_layer.append((u[:b] - u[b:]).pow(2).mean(dim=(2, 3)))
        return torch.cat(per_layer, dim=1)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        return feats @ self._lin_weights()


# ------------------------------------------------------------------------ DISTS
_DISTS_C = 1e-6


class DISTS(PyiqaAdapter):
    """DISTS: structure (S1) and texture (S2) similarities per channel, weighted by alpha, beta."""

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        x, ref = self.check_inputs(x, ref)
        assert ref is not None
        b = x.shape[0]
        s1, s2 = [], []
        for f in self.net.forward_once(torch.cat([x, ref])):
            fx, fr = f[:b], f[b:]
            mx, mr = fx.mean(dim=(2, 3)), fr.mean(dim=(2, 3))
            vx = (fx - mx[..., None, None]).pow(2).mean(dim=(2, 3))
            vr = (fr - mr[..., None, None]).pow(2).mean(dim=(2, 3))
            cov = (fx * fr).mean(dim=(2, 3)) - mx * mr
            s1.append((2 * mx * mr + _DISTS_C) / (mx.pow(2) + mr.pow(2) + _DISTS_C))
            s2.append((2 * cov + _DISTS_C) / (vx + vr + _DISTS_C))
        return torch.cat(s1 + s2, dim=1)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        alpha, beta = self.net.alpha.flatten(), self.net.beta.flatten()
        w = torch.cat([alpha, beta]) / (alpha.sum() + beta.sum())
        return 1 - feats @ w


# ------------------------------------------------------------- any pyiqa metric
class PyiqaMetric(PyiqaAdapter):
    """Any pyiqa metric, with b(x) read by a forward hook on one submodule.

    ``layer``: a dotted submodule name of the pyiqa network (``net.named_modules()``);
    ``take``: ``"output"`` or ``"input"`` of that module.  Default: the *input* of
    the last ``nn.Linear``/``nn.Conv2d`` (where a regression head usually begins).
    If the module runs several times in one forward pass (siamese FR trunks,
    multi-crop), the activations of all calls are concatenated in call order.

    ``forward`` is pyiqa's own score.  ``head`` exists only when the hook takes
    the input of an ``nn.Linear`` (the layer applied to the features, averaged
    over its outputs); it equals ``forward`` when that layer produces the score.
    """

    def __init__(self, net: nn.Module, metric: str, name: str, *, layer: str | None = None,
                 take: str = "input") -> None:
        super().__init__(net, metric, name)
        modules = dict(net.named_modules())
        if layer is None:
            heads = [n for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d))]
            if not heads:
                raise InputError(f"pyiqa metric {metric!r} has no Linear/Conv2d layer; name one with @layer")
            layer, take = heads[-1], "input"
        if layer not in modules or layer == "":
            shown = [n for n in modules if n][-8:]
            raise InputError(f"pyiqa metric {metric!r} has no submodule {layer!r}; last ones: {shown}")
        if take not in ("input", "output"):
            raise InputError(f"feature take must be 'input' or 'output', got {take!r}")
        self.layer, self.take = layer, take
        self._module = modules[layer]
        self._captured: list[torch.Tensor] | None = None
        self._module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._captured is None:
            return
        value = args[0] if self.take == "input" else output
        if isinstance(value, (tuple, list)):
            value = value[0]
        if not isinstance(value, torch.Tensor):
            raise InputError(f"layer {self.layer!r} {self.take} is not a tensor")
        self._captured.append(value)

    def _run(self, x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        out = self.net(x) if self.mode is Mode.NR else self.net(x, ref)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.reshape(x.shape[0], -1).mean(dim=1)

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        x, ref = self.check_inputs(x, ref)
        self._captured = []
        try:
            self._run(x, ref)
            caps = self._captured
        finally:
            self._captured = None
        if not caps:
            raise InputError(f"layer {self.layer!r} of pyiqa metric {self.metric!r} was not called")
        b = x.shape[0]
        return torch.cat([c.reshape(b, -1) for c in caps], dim=1)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        mod = self._module
        if not (self.take == "input" and isinstance(mod, nn.Linear)):
            raise InputError(
                f"pyiqa:{self.metric}@{self.layer} has no standalone head (only the input of a Linear "
                "layer has one); use forward() or train an FS-IQA scorer on the features"
            )
        out = mod(feats.reshape(feats.shape[0], -1, mod.in_features))
        return out.reshape(feats.shape[0], -1).mean(dim=1)

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        x, ref = self.check_inputs(x, ref)
        return self._run(x, ref)


AdapterFactory = Callable[..., PyiqaAdapter]


def parse_pyiqa_name(sub: str) -> tuple[str, str | None, str]:
    """``'<metric>[@<layer>[:input|:output]]'`` -> (metric, layer, take).

    A layer without suffix means its output; no layer means the input of the
    last Linear/Conv2d.
    """
    metric, _, rest = sub.partition("@")
    if not metric:
        raise InputError("expected pyiqa:<metric>[@<layer>[:input|:output]], got an empty metric name")
    if not rest:
        return metric, None, "input"
    layer, _, take = rest.partition(":")
    return metric, layer, take or "output"
