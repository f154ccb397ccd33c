"""Any pyiqa metric as a model: ``pyiqa:<metric>[@<layer>[:input|:output]]``.

(Provisional module; the per-metric table follows.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import IQAModel, Mode
from robustbench_iqa.models.pyiqa_adapters import PyiqaAdapter, build_pyiqa_net
from robustbench_iqa.models.registry import register_prefix


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


@register_prefix("pyiqa", description="any pyiqa metric, pyiqa:<metric>[@<layer>[:input|:output]]")
def create_pyiqa_model(
    sub: str, *, weights: str | Path | None = None, device: torch.device | None = None
) -> IQAModel:
    metric, layer, take = parse_pyiqa_name(sub)
    net = build_pyiqa_net(metric, weights, name=f"pyiqa:{metric}")
    return PyiqaMetric(net, metric, f"pyiqa:{sub}", layer=layer, take=take)
