"""Weights of the published IQA architectures: random, pretrained, or a local file.

Every published adapter takes ``weights`` with one of these meanings:

* ``None`` (or ``"random"``): the real architecture with random initialization,
  built **without any download**.  pyiqa's constructors fetch backbone weights
  even when their ``pretrained`` flag is off (torchvision ``vgg16(weights=...)``,
  timm ``pretrained=True``, ``load_pretrained_network(url)``); :func:`building`
  switches those fetches off for the duration of the construction only.
* ``"pretrained"``: the published weights through the usual pyiqa / timm /
  torchvision download (or their local caches).  When they cannot be had, a
  :class:`~robustbench_iqa.errors.WeightsUnavailableError` names the URL and
  suggests ``weights=PATH`` instead of a urllib traceback.
* ``"pretrained-base"``: only the ImageNet backbone (for models whose published
  head is not downloadable in PyTorch form: KonCept512, DreamSim).
* a path: a local checkpoint (``.safetensors``, or a ``torch.save`` file read with
  ``weights_only=True``), checked key by key against the architecture.

No file is ever unpickled, whoever reads it: :func:`no_unpickling` makes every
``torch.load`` in the process -- pyiqa's ``load_pretrained_network``, torchvision's
and ``torch.hub``'s cache readers, which pass ``weights_only=False`` -- read with
``weights_only=True``, and refuses a file that holds anything but tensors and plain
containers (a pickle of Python objects would run code from the file).  It is active
while :func:`building` constructs a network and for the whole of every CLI command.

Policy (:func:`robustbench_iqa.models.registry.create_model`): weights are never random by
accident.  A model registered with ``default_weights="none"`` (a published architecture whose
real weights live elsewhere) refuses ``weights=None`` with :class:`WeightsRequiredError`,
naming the choices: ``"pretrained"``, a file, or an explicit ``"random"``; so does any model
that comes out of its factory with random learned parameters although no weights were asked
for (``pyiqa:lpips``).  A model whose default weights are real and local (the embedded models'
shipped files, weights installed with a package) registers ``default_weights="local"``, the
default.  Every built model carries :attr:`~robustbench_iqa.models.base.IQAModel.weights_origin`
(:class:`WeightsOrigin`), shown next to its scores in every table and report.
"""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustbench_iqa.errors import InputError, WeightsUnavailableError
from robustbench_iqa.provenance import file_sha256


class WeightsRequiredError(InputError):
    """A published architecture was asked for without saying which weights (never random by accident)."""


class DefaultWeights(StrEnum):
    """What a registered model builds with ``weights=None``."""

    LOCAL = "local"
    """Real weights read from this machine (shipped with the suite or an installed package)."""
    NONE = "none"
    """No real weights without a choice: ``weights`` must be given (a published architecture)."""


class WeightsOrigin(StrEnum):
    """Where a built model's weights came from, as shown next to its scores."""

    LOCAL = "local"
    """The model's own real default weights (shipped files, an installed package)."""
    PRETRAINED = "pretrained"
    PRETRAINED_BASE = "pretrained-base"
    """Only the ImageNet backbone is real; the head is random."""
    FILE = "file"
    RANDOM = "random"
    NONE = "none"
    """The model has no learned parameters (a formula such as PSNR)."""

    @property
    def is_random(self) -> bool:
        """Whether some learned parameters are random (the scores mean nothing about quality)."""
        return self in (WeightsOrigin.RANDOM, WeightsOrigin.PRETRAINED_BASE)


def weights_choices(model: str) -> str:
    """The sentence naming the choices of ``weights`` for ``model``."""
    return (f"model {model!r} is a published architecture and needs its weights named: "
            "weights='pretrained' (the published weights, downloaded or from the local cache), "
            "weights=PATH (a local checkpoint file), or weights='random' (random initialisation: scores that "
            "mean nothing about quality, for tests only); on the command line --weights pretrained|PATH|random, "
            f"in the verify config weights = {{ \"{model}\" = \"pretrained\" }}")


def weights_origin(model: nn.Module, weights: str | Path | None) -> WeightsOrigin:
    """Where ``model``'s weights came from, given the ``weights`` argument it was built with."""
    if not any(p.numel() for p in model.parameters()):
        return WeightsOrigin.NONE
    source = getattr(model, "weights_source", None)
    kind = getattr(source, "kind", None)
    if kind is not None:
        return {WeightsKind.RANDOM: WeightsOrigin.RANDOM, WeightsKind.PRETRAINED: WeightsOrigin.PRETRAINED,
                WeightsKind.PRETRAINED_BASE: WeightsOrigin.PRETRAINED_BASE,
                WeightsKind.PATH: WeightsOrigin.FILE}[WeightsKind(kind)]
    if weights is None:
        return WeightsOrigin.LOCAL
    if isinstance(weights, str) and weights in {k.value for k in WeightsKind} - {"path"}:
        return WeightsOrigin(weights)
    return WeightsOrigin.FILE


class WeightsKind(StrEnum):
    RANDOM = "random"
    PRETRAINED = "pretrained"
    PRETRAINED_BASE = "pretrained-base"
    PATH = "path"


def parse_weights(weights: str | Path | None) -> tuple[WeightsKind, Path | None]:
    """Classify the ``weights`` argument; a path must name an existing file or folder."""
    if weights is None:
        return WeightsKind.RANDOM, None
    if isinstance(weights, str) and weights in {k.value for k in WeightsKind} - {"path"}:
        return WeightsKind(weights), None
    if not isinstance(weights, (str, Path)):
        raise InputError(f"weights must be 'pretrained', 'random' or a file path, got {type(weights).__name__}")
    path = Path(weights).expanduser()
    if not path.exists():
        raise InputError(
            f"weights file not found: {path} ('pretrained' loads the published weights, "
            "'random' a random initialisation)"
        )
    return WeightsKind.PATH, path


# ------------------------------------------------------------------- provenance
@dataclass(frozen=True)
class WeightsFile:
    """One file a model's weights were read from."""

    role: str
    path: Path
    sha256: str


@dataclass(frozen=True)
class WeightsSource:
    """What a model was built from: how (:class:`WeightsKind`), in which checkpoint format,
    from which files (with their SHA-256), and anything worth knowing about the conversion."""

    kind: WeightsKind
    format: str
    files: tuple[WeightsFile, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def describe(self) -> dict[str, object]:
        """A JSON-serialisable record (for run configurations)."""
        return {"kind": self.kind.value, "format": self.format,
                "files": [{"role": f.role, "path": str(f.path), "sha256": f.sha256} for f in self.files],
                "notes": list(self.notes)}

    def lines(self) -> list[str]:
        """Human-readable lines: format, one line per file, notes."""
        out = [f"weights: {self.kind.value}, {self.format}"]
        out += [f"  {f.role}: {f.path}  sha256={f.sha256}" for f in self.files]
        out += [f"  note: {n}" for n in self.notes]
        return out


def weights_file(role: str, path: str | Path) -> WeightsFile:
    """A :class:`WeightsFile` for ``path`` with its SHA-256."""
    p = Path(path).expanduser().resolve()
    return WeightsFile(role, p, file_sha256(p))


def is_hdf5(path: Path) -> bool:
    """Whether ``path`` is an HDF5 file (Keras ``.h5``), by its signature."""
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


# --------------------------------------------------------------------- checkpoints
_CONTAINER_KEYS = ("params_ema", "params", "state_dict", "model", "net")


def file_kind(path: Path) -> str:
    """``"safetensors"``, or what the file looks like instead (for error messages), from its first bytes."""
    with path.open("rb") as f:
        head = f.read(16)
    if len(head) == 0:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive, e.g. a PyTorch .pt/.pth checkpoint"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle, e.g. a legacy PyTorch checkpoint"
    if head.startswith(b"\x89HDF"):
        return "an HDF5 file"
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    size = path.stat().st_size
    if 2 <= n <= size - 8 and head[8:9] == b"{":
        return "safetensors"
    return "not a recognised weights format"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint as a flat ``{name: tensor}`` dict on the CPU.

    Safetensors files (recognised by their content) are read with safetensors; anything else
    with ``torch.load(weights_only=True)``.  A checkpoint wrapped as
    ``{"params": state_dict}`` (pyiqa), ``{"state_dict": ...}`` or
    ``{"model": ...}`` is unwrapped, and a ``module.`` prefix (DataParallel) is
    dropped.
    """
    p = Path(path)
    if p.is_dir():
        raise InputError(f"weights {p} is a folder; this model takes a checkpoint file")
    if not p.is_file():
        raise InputError(f"weights file not found: {p}")
    if is_hdf5(p):
        raise InputError(f"checkpoint {p} is an HDF5 (Keras .h5) file, which this model does not read")
    kind = file_kind(p)
    if kind in ("an empty file", "not a recognised weights format") and p.suffix == ".safetensors":
        raise InputError(f"checkpoint {p} is not a safetensors file ({kind})")
    try:
        if kind == "safetensors":  # by content, not by name: a PyTorch file named .safetensors is read as one
            from safetensors.torch import load_file

            obj: Any = load_file(str(p), device="cpu")
        else:  # (from an open file: torch.load reads a path named .safetensors as safetensors)
            with p.open("rb") as f:
                obj = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, wrong format
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"cannot read checkpoint {p}: {msg}") from None
    for _ in range(2):  # at most two levels of wrapping
        if isinstance(obj, dict):
            inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is not None and not any(isinstance(v, torch.Tensor) for v in obj.values()):
                obj = inner
    if not isinstance(obj, dict) or not obj:
        raise InputError(f"checkpoint {p} holds no state dict (a dict of named tensors)")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise InputError(f"checkpoint {p} has non-tensor entries, e.g. {bad[:3]}")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def _alias_groups(module: nn.Module) -> dict[str, list[str]]:
    """Map each state-dict key to all keys naming the same tensor (shared modules)."""
    state = module.state_dict(keep_vars=True)
    by_tensor: dict[int, list[str]] = {}
    for k, t in state.items():
        by_tensor.setdefault(id(t), []).append(k)
    return {k: by_tensor[id(t)] for k, t in state.items()}


def _batchnorm_buffers(module: nn.Module) -> set[str]:
    out: set[str] = set()
    for name, sub in module.named_modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            out.update(f"{name}.{b}" if name else b for b, _ in sub.named_buffers(recurse=False))
    return out


def dtype_problems(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], shown: int = 3) -> str:
    """Entries whose dtype cannot be copied into the module's without changing their meaning: an
    integer, boolean or complex tensor where the module holds floating-point values (copying would
    cast 3 to 3.0 and 0.7 to 0 the other way round, without a word).  Floating-point precisions
    (float64 or float16 into float32) are converted, as ``load_state_dict`` does.  "" when none."""
    bad = [f"{k} is {v.dtype} (expected {own[k].dtype})" for k, v in state.items()
           if k in own and isinstance(v, torch.Tensor)
           and own[k].is_floating_point() != (v.is_floating_point() and not v.is_complex())]
    if not bad:
        return ""
    more = f" and {len(bad) - shown} more" if len(bad) > shown else ""
    return (f"{len(bad)} tensor(s) of the wrong kind of dtype: {', '.join(bad[:shown])}{more}; save the "
            f"floating-point weights as they were trained")


def load_state_into(
    module: nn.Module,
    state: dict[str, torch.Tensor],
    *,
    what: str,
    source: str,
    strip_prefixes: tuple[str, ...] = (),
) -> list[str]:
    """Copy ``state`` into ``module``, checking names and shapes; return missing keys.

    Unexpected keys and shape mismatches raise :class:`InputError` naming the
    first few.  Constant buffers set at construction (normalization constants,
    filters) may be absent from a checkpoint; every other absent entry
    (parameters, BatchNorm statistics) is returned, so the caller decides
    whether the rest of the architecture can come from elsewhere.
    """
    own = module.state_dict()
    for prefix in strip_prefixes:  # e.g. an adapter's state dict loaded into its inner network
        if state and all(k.startswith(prefix) for k in state):
            stripped = {k[len(prefix):]: v for k, v in state.items()}
            if sum(k in own for k in stripped) > sum(k in own for k in state):
                state = stripped
    aliases = _alias_groups(module)
    unexpected = sorted(k for k in state if k not in own)
    if unexpected:
        raise InputError(
            f"checkpoint {source} does not match {what}: {len(unexpected)} unexpected keys, "
            f"e.g. {unexpected[:3]}; expected keys like {list(own)[:3]}"
        )
    wrong = [
        f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items() if tuple(v.shape) != tuple(own[k].shape)
    ]
    if wrong:
        raise InputError(f"checkpoint {source} does not match {what}: shape mismatch in {wrong[:3]}")
    dtypes = dtype_problems(own, state)
    if dtypes:
        raise InputError(f"checkpoint {source} does not match {what}: {dtypes}")
    param_names = {k for k, _ in module.named_parameters(remove_duplicate=False)}
    # BatchNorm statistics are needed; its step counter is not (converted checkpoints omit it).
    needed = param_names | {k for k in _batchnorm_buffers(module) if not k.endswith("num_batches_tracked")}
    missing = sorted(
        k for k in own if k in needed and not any(a in state for a in aliases[k])
    )
    module.load_state_dict(state, strict=False)
    return missing


def load_checkpoint(
    module: nn.Module, path: str | Path, *, what: str, strip_prefixes: tuple[str, ...] = ()
) -> None:
    """Load a local checkpoint that must cover every parameter of ``module``."""
    missing = load_state_into(
        module, read_state_dict(path), what=what, source=str(path), strip_prefixes=strip_prefixes
    )
    if missing:
        raise InputError(
            f"checkpoint {path} does not match {what}: {len(missing)} missing keys, e.g. {missing[:3]}"
        )


# ------------------------------------------------------------ download control
class _Patch:
    """Replace ``name`` by ``fake`` in every loaded module where it is ``original``.

    Modules imported while the patch is active bind the fake (``from x import
    name``); :meth:`undo` scans all modules again and restores the original
    wherever the fake is found, so nothing leaks past the context.
    """

    def __init__(self, owner: object, name: str, fake: Any) -> None:
        self.name, self.fake, self.owner = name, fake, owner
        # For a class, keep the raw descriptor (a classmethod stays a classmethod).
        self.original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        setattr(owner, name, fake)
        self.scan = not isinstance(owner, type)
        for mod in self._modules() if self.scan else []:
            if vars(mod).get(name) is self.original:
                _set(mod, name, fake)

    @staticmethod
    def _modules() -> list[Any]:
        # Every loaded module: third-party packages (facexlib, clip, open_clip, ...) bind
        # ``from torch.hub import download_url_to_file`` too.
        return [m for m in list(sys.modules.values()) if m is not None and hasattr(m, "__dict__")]

    def undo(self) -> None:
        setattr(self.owner, self.name, self.original)
        for mod in self._modules() if self.scan else []:
            if vars(mod).get(self.name) is self.fake:
                _set(mod, self.name, self.original)


def _set(mod: Any, name: str, value: Any) -> None:
    try:
        setattr(mod, name, value)
    except (AttributeError, TypeError):  # read-only module proxies
        pass


def _where(args: tuple[Any, ...], kwargs: dict[str, Any], *, dst_arg: int | None) -> str:
    """Where the interrupted download would have put its file (the cache read offline)."""
    if dst_arg is None:
        return ""
    dst = args[dst_arg] if len(args) > dst_arg else kwargs.get("dst")
    if dst is None:
        return ""
    return str(dst)


def _hf_what(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    repo = args[0] if args else kwargs.get("repo_id", "?")
    filename = args[1] if len(args) > 1 else kwargs.get("filename", "?")
    return f"{filename} of the HuggingFace repository {repo!r}"


@contextmanager
def no_unpickling() -> Iterator[None]:
    """Within the block every ``torch.load`` reads with ``weights_only=True`` (whatever its caller
    asked), and a file that needs more is refused with an :class:`InputError` naming it."""
    original = torch.load
    if getattr(original, "_weights_only_enforced", False):  # already active (nested)
        yield
        return

    def load(f: Any, map_location: Any = None, pickle_module: Any = None, *, weights_only: Any = None,
             mmap: Any = None, **pickle_load_args: Any) -> Any:
        try:
            return original(f, map_location=map_location, weights_only=True, mmap=mmap, **pickle_load_args)
        except pickle.UnpicklingError as exc:
            why = next((ln.strip() for ln in str(exc).splitlines() if "Unsupported global" in ln), "")
            why = why.split(" was not an allowed global")[0].split("error: ")[-1]
            raise InputError(
                f"refused to read {_file_name(f)}: it holds Python objects beyond tensors, and reading it "
                f"would run code from the file{f' ({why})' if why else ''}; the suite never unpickles. If it "
                f"is a genuine checkpoint, save its state dict as safetensors where it was made and pass "
                f"weights=PATH, or delete it from the cache"
            ) from None

    load._weights_only_enforced = True  # type: ignore[attr-defined]
    patch = _Patch(torch, "load", load)
    try:
        yield
    finally:
        patch.undo()


def _file_name(f: Any) -> str:
    name = getattr(f, "name", f)
    return str(name) if isinstance(name, (str, Path)) else f"a {type(f).__name__} stream"


@contextmanager
def building(model: str, *, backbone: bool = False, checkpoint: bool = False) -> Iterator[None]:
    """Construct a pyiqa/timm/torchvision architecture under download control.

    ``backbone``: let torchvision/timm load their ImageNet weights;
    ``checkpoint``: let pyiqa load its published checkpoints
    (``load_pretrained_network``).  With both off nothing is fetched: the
    network is randomly initialized and any remaining download attempt raises
    :class:`WeightsUnavailableError`.  Failed downloads that are allowed also
    raise :class:`WeightsUnavailableError`.  Both messages name the file, its URL
    and the local path where it is read from without network.
    """
    import urllib.request

    import torch.hub

    allowed = backbone or checkpoint
    safe = no_unpickling()
    safe.__enter__()
    patches: list[_Patch] = []
    active = [0]  # guarded calls in progress: a download's own urlopen is not guarded twice

    def guard(fn: Callable[..., Any], *, dst_arg: int | None = None, hf: bool = False) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if active[0]:
                return fn(*args, **kwargs)
            if hf:
                what = _hf_what(args, kwargs)
                place = "place it in the HuggingFace cache ($HF_HOME, read offline)"
            else:
                target = args[0] if args else kwargs.get("url", "?")
                url = str(getattr(target, "full_url", target))  # urllib Request objects
                dst = _where(args, kwargs, dst_arg=dst_arg)
                filename = Path(url.split("?")[0]).name
                if not dst and "openaipublic.azureedge.net/clip/" in url:  # openai-clip's own download
                    dst = str(Path("~/.cache/clip").expanduser() / filename)
                what = f"{filename} ({url})"
                place = f"copy that file to {dst} (read from there offline)" if dst else \
                    "this download has no local cache to read offline"
            if not allowed:
                raise WeightsUnavailableError(
                    f"{model!r} cannot be built offline without its published weights: its constructor "
                    f"loads {what} even so; {place}"
                )
            active[0] += 1
            try:
                return fn(*args, **kwargs)
            except (OSError, RuntimeError, ValueError) as exc:
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                raise WeightsUnavailableError(
                    f"cannot download the weights of {model!r}: {what} ({reason}); {place}, "
                    f"or pass a local checkpoint as weights=PATH"
                ) from None
            finally:
                active[0] -= 1

        return wrapped

    try:
        patches.append(_Patch(torch.hub, "download_url_to_file", guard(torch.hub.download_url_to_file, dst_arg=1)))
        patches.append(_Patch(urllib.request, "urlopen", guard(urllib.request.urlopen)))
        try:
            import timm
            import timm.models._hub as timm_hub
        except ImportError:  # timm is optional for the pyiqa-only adapters
            timm = None  # type: ignore[assignment]
        if timm is not None:
            if timm_hub.hf_hub_download is not None:
                patches.append(_Patch(timm_hub, "hf_hub_download", guard(timm_hub.hf_hub_download, hf=True)))
            if not backbone:
                create = timm.create_model

                def create_offline(*args: Any, **kwargs: Any) -> Any:
                    kwargs["pretrained"] = False
                    kwargs.pop("checkpoint_path", None)
                    return create(*args, **kwargs)

                patches.append(_Patch(timm, "create_model", create_offline))
        if not backbone:
            from torchvision.models._api import WeightsEnum

            patches.append(_Patch(WeightsEnum, "verify", classmethod(lambda cls, obj: None)))
        if not checkpoint:
            try:
                import pyiqa.archs.arch_util as arch_util
            except ImportError:
                arch_util = None  # type: ignore[assignment]
            if arch_util is not None:
                patches.append(
                    _Patch(arch_util, "load_pretrained_network", lambda *a, **k: None)
                )
        yield
    finally:
        for p in reversed(patches):
            p.undo()
        safe.__exit__(None, None, None)
