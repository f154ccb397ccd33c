"""Any pyiqa metric as a model: ``pyiqa:<metric>[@<layer>[:input|:output]]``.

b(x) is read by forward hooks on submodules of pyiqa's network.  Without ``@layer`` the cut
comes from :data:`PYIQA_TABLE`, one entry per metric of ``pyiqa.list_models()``:

* :class:`Cut`: the input of the metric's own quality head (the learned regressor on top of its
  feature extractor: an MLP such as TOPIQ's ``score_linear`` or NIMA's ``classifier``, LPIPS'
  five ``lin`` layers, both of PieAPP's score and weight branches, ...), or the output of the
  learned layers a parameter-free head compares (DISTS' stages, MS-SWD's projections);
  ``head`` says whether :meth:`PyiqaMetric.head` reproduces pyiqa's score from the features
  (``"mean"``: the head module's output, averaged over its calls and crops; ``"mos"``: then
  pyiqa's ``dist_to_mos``; ``"first"``: its first output; ``"sum"``: summed over the layers, LPIPS)
  or is left to FS-IQA's scorer (None).  Spatial FR cuts (the LPIPS family's lin inputs, DISTS'
  stages) are averaged over space (``pool``), so that b(x) has a fixed size at any image size;
  FS-IQA refuses, before caching features or building its FTN, a backbone wider than
  :data:`robustbench_iqa.certify.heads.MAX_FEATURES`.
* :class:`Formula`: a hand-crafted metric (PSNR, SSIM, NIQE, ...).  It builds, scores and can
  be attacked, but has no learned backbone to smooth: :meth:`features` refuses.  Some read
  parameter files (NIQE's ``.mat``) that pyiqa downloads once into its cache.
* :class:`Refusal`: not an image-quality model this suite can use (distribution metrics,
  multimodal LLMs, metrics that compute the distorted image's features without gradient).
* :class:`Unverified`: a learned metric that cannot be built offline with random weights (its
  constructor loads a backbone or a CLIP checkpoint): it builds from pyiqa's caches; name the
  layer with ``@layer``, since no cut could be checked.

A named ``@layer`` always wins.  Inputs are RGB in [0, 1].
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_iqa.errors import InputError
from robustbench_iqa.models.base import IQAModel, Mode
from robustbench_iqa.models.pyiqa_adapters import PyiqaAdapter, build_pyiqa_net, pyiqa_config
from robustbench_iqa.models.registry import register_prefix

Layer = tuple[str, str]  # (dotted submodule name, "input" | "output")


@dataclass(frozen=True)
class Cut:
    """b(x) = the ``take`` of each of ``layers`` (every call, in call order); see module doc."""

    layers: tuple[Layer, ...]
    head: str | None = None  # "mean" | "sum" | "mos" | "first" | None
    note: str = ""
    pool: bool = False
    """Average every captured (rows, C, H, W) map over its H x W positions: a fixed-size b(x) at any
    image size.  Exact for heads that are linear per position and then spatially averaged (LPIPS)."""


@dataclass(frozen=True)
class Formula:
    """A hand-crafted metric: no learned backbone/head split."""

    files: bool = False  # reads parameter files from pyiqa's cache (NIQE/BRISQUE/NRQM models)
    note: str = ""


@dataclass(frozen=True)
class Refusal:
    reason: str


@dataclass(frozen=True)
class Unverified:
    reason: str


Entry = Cut | Formula | Refusal | Unverified


def _in(*names: str) -> tuple[Layer, ...]:
    return tuple((n, "input") for n in names)


def _out(*names: str) -> tuple[Layer, ...]:
    return tuple((n, "output") for n in names)


_LPIPS = Cut(_in("lin0", "lin1", "lin2", "lin3", "lin4"), "sum",
             "squared differences of unit-normalised trunk features, the input of the 5 lin layers, averaged "
             "over space (the 1x1 lin layers are linear, so the score is their sum exactly)", pool=True)
_LPIPS_PLUS = Cut(_in("lin0", "lin1", "lin2", "lin3", "lin4"), None,
                  "squared differences of unit-normalised trunk features, the input of the 5 lin layers, "
                  "averaged over space (LPIPS+ weights positions by semantic features: no exact head)", pool=True)
_TOPIQ = Cut(_in("score_linear"), "mean", "the attention-pooled token, input of the score MLP")
_TOPIQ_MOS = Cut(_in("score_linear"), "mos", "the attention-pooled token, input of the score MLP (10 bins)")
_MUSIQ = Cut(_in("head"), "mean", "the class token, input of the linear head")
_NIMA = Cut(_in("classifier"), "mos", "the pooled backbone features, input of the 10-bin classifier")
_NIMA_1 = Cut(_in("classifier"), "mean", "the pooled backbone features, input of the classifier")
_MANIQA = Cut(_in("fc_score"), None, "the Swin tokens, input of the score and weight branches")
_WADIQAM = Cut(_in("fc_q"), None, "per-patch features, input of the score and weight branches")
_TRES = Cut(_in("fc"), None, "transformer + ResNet features, input of fc (the image and its flip)")
_ARNIQA = Unverified("its constructor loads the ARNIQA encoder and regressor checkpoints (no random "
                     "version); the quality head is `regressor` (input: the normalised encoder features)")
_CLIP = Unverified("it builds on OpenAI's CLIP checkpoint (openai-clip), which has no random version; "
                   "its quality head compares the CLIP image embedding with text prompts")
_NOGRAD = ("pyiqa computes the distorted image's features under torch.no_grad, so neither FS-IQA's "
           "Jacobian nor a gradient attack sees the distorted image")
_LMM = ("a multimodal large language model built with transformers' from_pretrained (billions of "
        "parameters); not supported as an IQA backbone here")
_DIST = "a distribution metric over image folders, not a per-image quality score"

PYIQA_TABLE: dict[str, Entry] = {
    # learned, built offline with random weights: cut checked by the tests
    "cnniqa": Cut(_in("fc1"), None, "max/min-pooled convolution features, input of the fc1-fc3 MLP"),
    "dbcnn": Cut(_in("fc"), "mean", "the bilinear-pooled VGG x SCNN features, input of fc"),
    "hyperiqa": Cut(_out("lda_modules.0", "lda_modules.1", "lda_modules.2", "lda_modules.3", "conv1"), None,
                    "local-distortion features and the hyper-network input (the `hyperiqa` model splits it exactly)"),
    "lpips": _LPIPS, "lpips+": _LPIPS_PLUS, "lpips-vgg": _LPIPS, "lpips-vgg+": _LPIPS_PLUS,
    "stlpips": _LPIPS, "stlpips-vgg": _LPIPS,
    "dists": Cut((("stage1", "input"),) + _out("stage1", "stage2", "stage3", "stage4", "stage5"), None,
                 "the channel means of the normalised image and the 5 VGG stages of both images (the "
                 "`dists` model splits DISTS exactly)", pool=True),
    "maniqa": _MANIQA, "maniqa-kadid": _MANIQA, "maniqa-pipal": _MANIQA,
    "msswd": Cut(_out("conv_m1"), None, "the learned projections of both images, compared by sorting"),
    "musiq": _MUSIQ, "musiq-paq2piq": _MUSIQ, "musiq-spaq": _MUSIQ,
    "musiq-ava": Cut(_in("head"), "mos", "the class token, input of the 10-bin head"),
    "nima": _NIMA, "nima-vgg16-ava": _NIMA, "nima-koniq": _NIMA_1, "nima-spaq": _NIMA_1,
    "paq2piq": Cut(_in("head"), "mean", "the RoI-pooled ResNet features, input of the head"),
    "pieapp": Cut(_in("fc1_score", "fc1_weight"), None, "per-patch feature differences, input of both branches"),
    "topiq_nr": _TOPIQ, "topiq_nr-flive": _TOPIQ, "topiq_nr-spaq": _TOPIQ,
    "topiq_fr": _TOPIQ, "topiq_fr-pipal": _TOPIQ, "topiq_iaa_res50": _TOPIQ_MOS,
    "tres": _TRES, "tres-flive": _TRES,
    "unique": Cut(_in("fc"), "first", "the bilinear-pooled ResNet features, input of fc (mean output)"),
    "uranker": Cut(_in("head2", "head3", "head4"), "mean", "the class tokens of 3 stages, inputs of 3 heads"),
    "wadiqam_nr": _WADIQAM, "wadiqam_fr": _WADIQAM,
    # learned, not buildable offline with random weights
    "ahiq": Unverified("its constructor loads the AHIQ checkpoint even without pretrained weights; "
                       "the quality head is `regressor` (a pixel-wise prediction over ViT and CNN features)"),
    "ckdn": Unverified("its constructor loads torchvision's ResNet-50 ImageNet weights unconditionally"),
    "metaiqa": Unverified("its constructor loads the meta-learned checkpoint even without pretrained weights; "
                          "the quality head is `head` (input: ResNet-18 features)"),
    **{n: _ARNIQA for n in ("arniqa", "arniqa-clive", "arniqa-csiq", "arniqa-flive", "arniqa-kadid",
                            "arniqa-live", "arniqa-spaq", "arniqa-tid")},
    **{n: _CLIP for n in ("clipiqa", "clipiqa+", "clipiqa+_rn50_512", "clipiqa+_vitL14_512", "clipscore",
                          "laion_aes", "liqe", "liqe_mix", "maclip", "qualiclip", "qualiclip+", "qualiclip+-clive",
                          "qualiclip+-flive", "qualiclip+-spaq", "afine_all", "afine_all_scale", "afine_fr",
                          "afine_nr")},
    "fgresq": Unverified("it builds on a HuggingFace CLIP vision model loaded with from_pretrained"),
    "fgresq_pair": Unverified("it builds on a HuggingFace CLIP vision model loaded with from_pretrained"),
    "topiq_iaa": Unverified("its Swin backbone loads its ImageNet weights unconditionally"),
    "topiq_nr_swin-face": Unverified("its Swin backbone loads its ImageNet weights unconditionally"),
    "topiq_nr-face": Unverified("it loads facexlib's face detector unconditionally"),
    "topiq_nr-face-v1": Unverified("it loads facexlib's face detector unconditionally"),
    # hand-crafted
    **{n: Formula() for n in ("psnr", "psnry", "ssim", "ssimc", "ms_ssim", "cw_ssim", "fsim", "vif", "gmsd",
                              "nlpd", "vsi", "mad", "piqe", "entropy")},
    **{n: Formula(files=True) for n in ("niqe", "niqe_matlab", "ilniqe", "brisque", "brisque_matlab",
                                        "nrqm", "pi")},
    # not usable here
    "deepdc": Refusal(_NOGRAD), "dmm": Refusal(_NOGRAD),
    **{n: Refusal(_DIST) for n in ("fid", "sfid", "fid_dinov2", "inception_score")},
    **{n: Refusal(_LMM) for n in ("qalign", "qalign_4bit", "qalign_8bit", "qrealign", "qrealign-lite",
                                  "qrealign-mini", "qrealign-pro", "compare2score")},
}


def table_entry(metric: str) -> Entry:
    """The :data:`PYIQA_TABLE` entry of ``metric`` (an :class:`InputError` for unknown names)."""
    pyiqa_config(metric)  # unknown metric -> InputError with similar names
    entry = PYIQA_TABLE.get(metric)
    if entry is None:
        return Unverified("it is newer than this suite's table of pyiqa metrics")
    return entry


class PyiqaMetric(PyiqaAdapter):
    """Any pyiqa metric, with b(x) read by forward hooks (see the module docstring).

    ``forward`` is pyiqa's own score.  If a submodule runs several times in one forward pass
    (siamese FR trunks, crops), the activations of all calls are concatenated in call order;
    rows of a call that holds several crops per image stay with their image.
    """

    def __init__(self, net: nn.Module, metric: str, name: str, *, layers: tuple[Layer, ...],
                 head: str | None = None, pool: bool = False) -> None:
        super().__init__(net, metric, name)
        modules = dict(net.named_modules())
        for layer, take in layers:
            if layer not in modules or layer == "":
                shown = [n for n in modules if n][-8:]
                raise InputError(f"pyiqa metric {metric!r} has no submodule {layer!r}; last ones: {shown}")
            if take not in ("input", "output"):
                raise InputError(f"feature take must be 'input' or 'output', got {take!r}")
        if head is not None and (len({n for n, _ in layers}) != len(layers) or any(t != "input" for _, t in layers)):
            raise ValueError("a head needs distinct layers whose inputs are taken")
        self.layers, self.head_kind, self.pool = layers, head, bool(pool)
        self._captured: list[tuple[int, torch.Tensor]] | None = None
        self._shapes: list[tuple[int, int, tuple[int, ...]]] = []  # (layer index, rows, shape of a row)
        for i, (layer, take) in enumerate(layers):
            modules[layer].register_forward_hook(self._hook(i, take))

    def _hook(self, index: int, take: str) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if self._captured is None:
                return
            value = args[0] if take == "input" else output
            if isinstance(value, (tuple, list)):
                value = value[0]
            if not isinstance(value, torch.Tensor):
                raise InputError(f"the {take} of layer {self.layers[index][0]!r} is not a tensor")
            if self.pool and value.dim() == 4:
                value = value.mean(dim=(2, 3), keepdim=True)
            self._captured.append((index, value))

        return hook

    def _run(self, x: torch.Tensor, ref: torch.Tensor | None) -> torch.Tensor:
        try:
            out = self.net(x) if self.mode is Mode.NR else self.net(x, ref)
        except (RuntimeError, ValueError, AssertionError) as exc:  # e.g. an image too small for its kernels
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(f"{self.name} failed on an input of shape {tuple(x.shape)}: {first}") from None
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.reshape(x.shape[0], -1).mean(dim=1)

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        x, ref = self._inputs(x, ref)
        self._captured = []
        try:
            self._run(x, ref)
            caps = self._captured
        finally:
            self._captured = None
        missing = {self.layers[i][0] for i in range(len(self.layers))} - {self.layers[i][0] for i, _ in caps}
        if missing:
            raise InputError(f"layer(s) {sorted(missing)} of pyiqa metric {self.metric!r} were not called")
        b = x.shape[0]
        self._shapes = [(i, int(c.shape[0]), tuple(c.shape[1:])) for i, c in caps]
        return torch.cat([c.reshape(b, -1) for _, c in caps], dim=1)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        if self.head_kind is None or not self._shapes:
            raise InputError(
                f"{self.name} has no standalone head (its score needs more than the hooked layers' "
                "inputs); use forward(), or train an FS-IQA scorer on the features"
            )
        from pyiqa.archs.arch_util import dist_to_mos

        modules = dict(self.net.named_modules())
        b, start, outs = feats.shape[0], 0, []
        for index, rows, shape in self._shapes:
            width = rows // b * int(torch.Size(shape).numel())
            chunk = feats[:, start:start + width].reshape(rows, *shape)
            start += width
            out = modules[self.layers[index][0]](chunk)
            outs.append(out.reshape(b, -1, out.shape[-1]))
        if start != feats.shape[1]:
            raise InputError(f"{self.name}: features of width {feats.shape[1]} do not match the last "
                             f"features() call (width {start})")
        q = torch.cat(outs, dim=1).mean(dim=1)  # mean over calls, crops and heads
        if self.head_kind == "mos":
            return dist_to_mos(q).reshape(b)
        if self.head_kind == "first":
            return q[:, 0]
        if self.head_kind == "sum":  # LPIPS: the per-layer spatial means are summed
            return torch.cat(outs, dim=1).sum(dim=1).reshape(b, -1).mean(dim=1)
        return q.reshape(b, -1).mean(dim=1)

    def forward(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        x, ref = self._inputs(x, ref)
        return self._run(x, ref)


class PyiqaFormula(PyiqaMetric):
    """A hand-crafted pyiqa metric: scored and attacked like any model, without features."""

    def __init__(self, net: nn.Module, metric: str, name: str) -> None:
        super().__init__(net, metric, name, layers=())

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        raise InputError(f"{self.name} is a hand-crafted formula with no learned backbone to smooth: it can be "
                         "scored, attacked and defended in input space, but FS-IQA needs a learned network")


def parse_pyiqa_name(sub: str) -> tuple[str, str | None, str]:
    """``'<metric>[@<layer>[:input|:output]]'`` -> (metric, layer, take).

    A layer without suffix means its output; no layer means the table's cut.
    """
    metric, _, rest = sub.partition("@")
    if not metric:
        raise InputError("expected pyiqa:<metric>[@<layer>[:input|:output]], got an empty metric name")
    if not rest:
        return metric, None, "input"
    layer, _, take = rest.partition(":")
    return metric, layer, take or "output"


def _build(metric: str, weights: str | Path | None) -> nn.Module:
    """pyiqa's network; a failure of its constructor becomes one :class:`InputError` line.

    With ``weights=None`` nothing is downloaded: files a constructor loads unconditionally (a
    backbone, NIQE's parameters) are read from their caches, or the error names them and the
    cache path to copy them to.
    """
    from robustbench_iqa.errors import WeightsUnavailableError

    name = f"pyiqa:{metric}"
    try:
        return build_pyiqa_net(metric, weights, name=name)
    except WeightsUnavailableError:
        raise
    except InputError:
        raise
    except ModuleNotFoundError as exc:
        missing = exc.name or str(exc)
        if missing == "pkg_resources":
            try:
                version = importlib.metadata.version("setuptools")
            except importlib.metadata.PackageNotFoundError:
                version = "absent"
            raise InputError(f"{name} imports openai-clip, which needs pkg_resources: setuptools {version} no "
                             "longer ships it (removed in setuptools 82); pip install 'setuptools<82'") from None
        raise InputError(f"{name} needs the Python module {missing!r}, which is not installed") from None
    except Exception as exc:  # third-party constructors: downloads through other libraries, ...
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise InputError(f"{name} cannot be built here: {type(exc).__name__}: {first}") from None


@register_prefix("pyiqa", description="any pyiqa metric, pyiqa:<metric>[@<layer>[:input|:output]]")
def create_pyiqa_model(
    sub: str, *, weights: str | Path | None = None, device: torch.device | None = None
) -> IQAModel:
    """``pyiqa:<metric>[@<layer>[:input|:output]]`` with the cut of :data:`PYIQA_TABLE` by default."""
    metric, layer, take = parse_pyiqa_name(sub)
    entry = table_entry(metric)
    if isinstance(entry, Refusal):
        raise InputError(f"pyiqa:{metric} is not supported: {entry.reason}")
    if isinstance(entry, Formula):
        if layer is not None:
            raise InputError(f"pyiqa:{metric} is a hand-crafted formula with no layers to name")
        return PyiqaFormula(_build(metric, weights), metric, f"pyiqa:{sub}")
    net = _build(metric, weights)
    if layer is not None:
        return PyiqaMetric(net, metric, f"pyiqa:{sub}", layers=((layer, take),))
    if isinstance(entry, Unverified):
        raise InputError(f"pyiqa:{metric} has no default feature cut ({entry.reason}); name one as "
                         f"pyiqa:{metric}@<layer>[:input|:output]")
    return PyiqaMetric(net, metric, f"pyiqa:{sub}", layers=entry.layers, head=entry.head, pool=entry.pool)
