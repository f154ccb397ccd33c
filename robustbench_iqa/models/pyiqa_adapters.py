"""Adapters that split pyiqa's architectures into backbone b(x) and published head.

FS-IQA smooths the output of the IQA backbone, ``f_init = b(x)`` (FS-IQA paper,
Sec. "Feature Preparation Pipeline"), so each adapter cuts its network where
the published head begins, with ``head(features(x, ref)) == net(x, ref)`` up to
float rounding (the tests check this against pyiqa's own forward):

* DBCNN (Zhang et al. 2020): b(x) = the l2-normalised, signed-sqrt bilinear pool
  of VGG-16 and SCNN features (D = 512 * 128); head = the final linear layer.
* HyperIQA: see :mod:`robustbench_iqa.models.hyperiqa`.
* LPIPS (Zhang et al. 2018, Eq. 1-3): ``d = sum_l w_l . mean_hw (n(y_l) - n(r_l))^2``;
  because the 1x1 "lin" layers are linear, b(x, ref) = the per-channel squared
  differences of unit-normalised trunk features, averaged over space
  (D = sum_l C_l); head = the dot product with the lin weights.
* DISTS (Ding et al. 2020, Eq. 8-10): b(x, ref) = the per-channel structure and
  texture similarities S1, S2 of all stages (D = 2 * 1475); head =
  ``1 - (alpha . S1 + beta . S2) / (sum alpha + sum beta)``.

Any other pyiqa metric: :mod:`robustbench_iqa.models.pyiqa_metrics`.  Inputs are RGB in
[0, 1]; the normalisation each network expects happens inside (as in pyiqa).  Each adapter
takes ``input_size`` (default ``"native"``: the image as given), its evaluation protocol.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import IQAModel, Mode
from robustbench_iqa.models.protocol import Size, parse_size, resize_to, size_text
from robustbench_iqa.models.weights import (
    WeightsKind,
    WeightsSource,
    building,
    load_state_into,
    parse_weights,
    read_state_dict,
    weights_file,
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


@dataclass(frozen=True)
class Trunk:
    """The torchvision ImageNet trunk of a metric whose published checkpoint holds only its
    calibrated head (pyiqa's and the ``lpips``/``DISTS_pytorch`` packages' LPIPS and DISTS files).

    ``url``: torchvision's download URL (its file name is what ``$TORCH_HOME/hub/checkpoints``
    holds); ``pattern``/``template``: how a trunk key of the metric maps to the torchvision key
    (``re.sub(pattern, template, key)``).
    """

    url: str
    pattern: str
    template: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    def cached(self) -> Path:
        import torch.hub

        return Path(torch.hub.get_dir()) / "checkpoints" / self.filename

    def state_for(self, keys: list[str], source: Path) -> dict[str, torch.Tensor]:
        """The metric's trunk entries ``keys`` read from the torchvision checkpoint ``source``."""
        tv = read_state_dict(source)
        out, absent = {}, []
        for k in keys:
            tk = re.sub(self.pattern, self.template, k)
            if tk in tv:
                out[k] = tv[tk]
            else:
                absent.append(tk)
        if absent:
            raise InputError(f"{source} is not the torchvision trunk {self.filename}: it lacks {absent[:3]}")
        return out


def build_pyiqa_net(
    metric: str,
    weights: str | Any | None,
    *,
    name: str,
    trunk: Trunk | None = None,
    trunk_file: str | Path | None = None,
    convert: Callable[[dict[str, torch.Tensor]], tuple[dict[str, torch.Tensor], str]] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build pyiqa's network for ``metric`` with the suite's ``weights`` semantics.

    A local checkpoint is read (safetensors, or ``torch.load(weights_only=True)``: pyiqa's
    ``{"params": ...}`` files, the authors' ``.pkl``) and, if ``convert`` is given, passed
    through it (it returns the state in pyiqa's names and a description of the format).  A
    checkpoint that covers everything but the ImageNet ``trunk`` (pyiqa's LPIPS and DISTS
    files, the ``lpips``/``DISTS_pytorch`` head files) gets the trunk from ``trunk_file`` or,
    without it, from torchvision's cache ``$TORCH_HOME/hub/checkpoints/<file>``; nothing is
    downloaded.  The built network carries a :class:`WeightsSource` as ``net.weights_source``.
    """
    from pyiqa.archs import build_network

    opts = copy.deepcopy(dict(pyiqa_config(metric)["metric_opts"]))
    opts.update(overrides)
    kind, path = parse_weights(weights)
    if trunk_file is not None and kind is not WeightsKind.PATH:
        raise InputError(f"{name}: trunk=PATH completes a head-only checkpoint given as weights=PATH; "
                         f"got weights={weights!r}")

    def build(*, backbone: bool, checkpoint: bool) -> nn.Module:
        with building(name, backbone=backbone, checkpoint=checkpoint):
            return build_network(copy.deepcopy(opts))

    if kind is not WeightsKind.PATH:
        net = build(backbone=kind is not WeightsKind.RANDOM, checkpoint=kind is WeightsKind.PRETRAINED)
        how = {WeightsKind.RANDOM: "random initialisation (no download)",
               WeightsKind.PRETRAINED: "pyiqa's published weights (download or pyiqa's cache)",
               WeightsKind.PRETRAINED_BASE: "ImageNet backbone only (download or torchvision's cache)"}[kind]
        net.weights_source = WeightsSource(kind, how)  # type: ignore[assignment]
        return net
    assert path is not None
    state = read_state_dict(path)
    fmt = "state dict in pyiqa's layout"
    if convert is not None:
        state, fmt = convert(state)
    net = build(backbone=False, checkpoint=False)
    what = f"the {name} architecture"
    missing = load_state_into(net, state, what=what, source=str(path), strip_prefixes=("net.",))
    files = [weights_file(f"{name} weights", path)]
    if missing and trunk is not None and all(re.match(trunk.pattern, m) for m in missing):
        source = Path(trunk_file).expanduser() if trunk_file is not None else trunk.cached()
        if not source.is_file():
            raise InputError(
                f"{path} holds only the calibrated head of {name} ({len(state)} tensors); its ImageNet "
                f"trunk, torchvision's {trunk.filename} ({trunk.url}), "
                + (f"was not found at {source}" if trunk_file is not None else
                   f"is read from {source}, which does not exist: copy it there or pass trunk=PATH")
            )
        load_state_into(net, trunk.state_for(missing, source), what=what, source=str(source))
        files.append(weights_file("ImageNet trunk", source))
        fmt += " (head only) + torchvision ImageNet trunk"
    elif missing:
        raise InputError(
            f"checkpoint {path} does not match {what}: {len(missing)} missing keys, e.g. {missing[:3]}"
        )
    elif trunk_file is not None:
        raise InputError(f"{path} already holds the trunk of {name}; trunk=PATH is for head-only files")
    net.weights_source = WeightsSource(kind, fmt, tuple(files))  # type: ignore[assignment]
    return net


class PyiqaAdapter(IQAModel):
    """Common part: holds pyiqa's network as ``self.net`` and its metadata."""

    net: Any  # pyiqa's architecture; its submodules are reached by name

    def __init__(self, net: nn.Module, metric: str, name: str, *, input_size: Size = None) -> None:
        super().__init__()
        cfg = pyiqa_config(metric)
        self.net = net
        self.weights_source = getattr(net, "weights_source", None)
        self.input_size = parse_size(input_size, what=f"{name} input_size")
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

    @property
    def protocol(self) -> dict[str, object]:
        """``input_size``: the size images are resized to before the network (``native``: none)."""
        return {"input_size": size_text(self.input_size)}

    def _inputs(self, x: torch.Tensor, ref: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Validated inputs, resized to the protocol's ``input_size``."""
        x, ref = self.check_inputs(x, ref)
        return resize_to(x, self.input_size), (None if ref is None else resize_to(ref, self.input_size))


# ------------------------------------------------------------------------ DBCNN
class DBCNN(PyiqaAdapter):
    """DBCNN: bilinear pool of VGG-16 (authentic) x SCNN (synthetic) features -> linear."""

    net_min_size = (16, 16)
    """The smallest (H, W) its network takes (SCNN's strided convolutions; smaller raises)."""

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        x, _ = self._inputs(x, ref)
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


# ------------------------------------------------------------------------ LPIPS
class LPIPS(PyiqaAdapter):
    """LPIPS (v0.1): per-channel spatially averaged squared unit-feature differences."""

    net_min_size = (31, 31)
    """The smallest (H, W) its network takes (AlexNet's stride-4 11x11 stem and pools; smaller raises)."""

    def _lin_weights(self) -> torch.Tensor:
        return torch.cat([lin.model[-1].weight.flatten() for lin in self.net.lins])

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        x, ref = self._inputs(x, ref)
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
        x, ref = self._inputs(x, ref)
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
