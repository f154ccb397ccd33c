"""DreamSim (Fu et al., "DreamSim: Learning New Dimensions of Human Visual Similarity using
Synthetic Data", NeurIPS 2023): the published ensemble, rebuilt with timm blocks.

The official model (``dreamsim.dreamsim()``, ``dreamsim_type="ensemble"``) concatenates three
ViT-B/16 embeddings, each of an image normalised its own way:

* ``dino_vitb16`` (DINO, ImageNet normalisation): the class token of the output of block 11
  (the last block, *before* the final LayerNorm), 768 values; GELU, LayerNorm eps 1e-6;
* ``clip_vitb16`` (OpenAI CLIP, CLIP normalisation): LayerNorm before the blocks (``ln_pre``),
  QuickGELU, LayerNorm eps 1e-5; the class token after the final LayerNorm, times the
  projection ``proj`` (768 x 512);
* ``open_clip_vitb16`` (OpenCLIP, CLIP normalisation): as CLIP with GELU.

All three were fine-tuned with LoRA on the ``qkv`` projections (r = 16, alpha = 8); the LoRA
update is merged into the weights here (``W + alpha / r * B A``).  The embedding (1792 values)
is centred and scaled to unit length (``normalize_embeds=True``), and the distance is
``d = 1 - cos(e(x), e(r))``.  For FS-IQA, b(x, r) = [e(x), e(r)] (D = 2 * 1792) and the head is
the cosine distance of the two halves.

**Protocol**: ``input_size=224`` (default) resizes both images to 224 x 224 (bicubic,
antialiased: the official preprocess resizes the PIL image bicubically); ``"native"`` feeds the
image as given, with the position embeddings interpolated as the official ViTs do.

**Weights** (``weights=PATH``): the folder ``dreamsim()`` caches into (``cache_dir``), or the
release zip (``dreamsim_ensemble_checkpoint.zip``), holding ``clip_vitb16_pretrain.pth.tar``,
``open_clip_vitb16_pretrain.pth.tar`` and ``ensemble_lora/adapter_config.json`` +
``adapter_model.safetensors`` (or ``.bin``); plus the DINO backbone that ``dreamsim()`` fetches
through ``torch.hub``, ``dino_vitbase16_pretrain.pth``, looked up at ``dino=PATH``, in
``<folder>/checkpoints/`` and in ``$TORCH_HOME/hub/checkpoints/``.  Or a state dict of this
adapter (``members.<i>.*``, e.g. written by ``robustbench-iqa weights convert``).
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from robustbench_iqa.errors import InputError, WeightsUnavailableError
from robustbench_iqa.models.base import IQAModel, Mode
from robustbench_iqa.models.protocol import Size, parse_size, resize_to, size_text
from robustbench_iqa.models.weights import (
    WeightsKind,
    WeightsSource,
    load_checkpoint,
    load_state_into,
    parse_weights,
    weights_file,
)

DREAMSIM_URL = "https://github.com/ssundaram21/dreamsim/releases/download/v0.2.0-checkpoints/dreamsim_ensemble_checkpoint.zip"
DINO_FILE = "dino_vitbase16_pretrain.pth"
DINO_URL = f"https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/{DINO_FILE}"
LORA_DIR = "ensemble_lora"
IMAGE_SIZE = 224
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


@dataclass(frozen=True)
class Member:
    """One ViT of the ensemble: its name, checkpoint file and architectural details."""

    name: str
    file: str  # in the DreamSim cache folder
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    quick_gelu: bool
    pre_norm: bool  # CLIP's ln_pre (the official code puts it in place of pos_drop)
    ln_eps: float
    proj_dim: int  # 0: the last block's class token (DINO); else the projected, normed class token
    width: int = 768
    depth: int = 12
    heads: int = 12
    patch: int = 16


ENSEMBLE: tuple[Member, ...] = (
    Member("dino_vitb16", DINO_FILE, *_IMAGENET, quick_gelu=False, pre_norm=False, ln_eps=1e-6, proj_dim=0),
    Member("clip_vitb16", "clip_vitb16_pretrain.pth.tar", *_CLIP, quick_gelu=True, pre_norm=True,
           ln_eps=1e-5, proj_dim=512),
    Member("open_clip_vitb16", "open_clip_vitb16_pretrain.pth.tar", *_CLIP, quick_gelu=False, pre_norm=True,
           ln_eps=1e-5, proj_dim=512),
)


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, the activation of OpenAI's CLIP."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ViT(nn.Module):
    """A ViT (DreamSim's: ViT-B/16, 12 blocks, width 768, 12 heads, qkv bias) returning one
    embedding per image.

    The parameter names follow the official checkpoints (``patch_embed.proj``, ``cls_token``,
    ``pos_embed``, ``blocks.<i>.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``,
    ``norm``), with CLIP's ``ln_pre`` as ``norm_pre`` and its projection as ``proj``.
    """

    proj: torch.Tensor | None

    def __init__(self, member: Member) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        norm = partial(nn.LayerNorm, eps=member.ln_eps)
        act = QuickGELU if member.quick_gelu else nn.GELU
        patch, dim, depth, heads = member.patch, member.width, member.depth, member.heads
        grid = IMAGE_SIZE // patch
        self.member, self.patch = member, patch
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.norm_pre = norm(dim) if member.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm,  # type: ignore[arg-type]
                  act_layer=act) for _ in range(depth)
        )
        self.norm = norm(dim) if member.proj_dim else nn.Identity()
        if member.proj_dim:
            self.proj = nn.Parameter(torch.zeros(dim, member.proj_dim))
        else:
            self.register_parameter("proj", None)
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(member.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(member.std).view(1, 3, 1, 1), persistent=False)

    @property
    def embed_dim(self) -> int:
        return self.member.proj_dim or int(self.cls_token.shape[-1])

    def _pos_embed(self, rows: int, cols: int, height: int, width: int) -> torch.Tensor:
        """Position embeddings for a ``rows x cols`` patch grid, interpolated as the official
        ViTs do (bicubic with scale factors ``(n + 0.1) / grid``) unless the input is the
        square training grid."""
        n = self.pos_embed.shape[1] - 1
        if rows * cols == n and height == width:
            return self.pos_embed
        g = int(math.sqrt(n))
        dim = self.pos_embed.shape[-1]
        grid = self.pos_embed[:, 1:].reshape(1, g, g, dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=((rows + 0.1) / g, (cols + 0.1) / g), mode="bicubic",
                             align_corners=False)
        grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat([self.pos_embed[:, :1], grid], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if min(h, w) < self.patch:
            raise InputError(f"DreamSim needs images of at least {self.patch}x{self.patch}, got {h}x{w}")
        t = cast(nn.Conv2d, self.patch_embed.proj)((x - self.mean) / self.std)
        rows, cols = t.shape[-2:]
        t = t.flatten(2).transpose(1, 2)
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1)
        t = self.norm_pre(t + self._pos_embed(rows, cols, h, w))
        for blk in self.blocks:
            t = blk(t)
        cls = self.norm(t)[:, 0]
        return cls if self.proj is None else cls @ self.proj


def normalize_embedding(e: torch.Tensor) -> torch.Tensor:
    """Centre each embedding on its mean and scale it to unit L2 norm (``normalize_embeds``)."""
    e = e - e.mean(dim=1, keepdim=True)
    return e / e.norm(dim=1, keepdim=True)


class DreamSim(IQAModel):
    """FR distance; lower = more similar; range [0, 2] (in practice about [0, 1])."""

    name = "dreamsim"
    mode = Mode.FR
    lower_better = True
    score_range = (0.0, 2.0)

    def __init__(self, *, input_size: Size = IMAGE_SIZE, ensemble: tuple[Member, ...] = ENSEMBLE) -> None:
        super().__init__()
        self.input_size = parse_size(input_size, what="dreamsim input_size")
        vits = [ViT(m) for m in ensemble]
        self.members = nn.ModuleList(vits)
        self.embed_dim = sum(v.embed_dim for v in vits)
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def protocol(self) -> dict[str, object]:
        """``input_size``: both images are resized to it (bicubic, antialiased), or ``native``."""
        return {"input_size": size_text(self.input_size)}

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The DreamSim embedding e(x) (B, 1792): concatenated, centred, unit length."""
        x = resize_to(x, self.input_size, mode="bicubic")
        return normalize_embedding(torch.cat([v(x) for v in self.members], dim=1))

    def features(self, x: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        x, ref = self.check_inputs(x, ref)
        assert ref is not None
        e = self.embed(torch.cat([x, ref]))
        b = x.shape[0]
        return torch.cat([e[:b], e[b:]], dim=1)

    def head(self, feats: torch.Tensor) -> torch.Tensor:
        ex, er = feats.chunk(2, dim=1)
        return 1 - F.cosine_similarity(ex, er, dim=1, eps=1e-8)


# -------------------------------------------------------------- official checkpoints
class _Release:
    """The DreamSim files in a folder or a release zip."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip = zipfile.ZipFile(path) if path.is_file() and zipfile.is_zipfile(path) else None
        if self.zip is None and not path.is_dir():
            raise InputError(f"{path} is neither DreamSim's cache folder, its release zip, nor a state dict "
                             "of this adapter")

    def names(self) -> list[str]:
        if self.zip is not None:
            return self.zip.namelist()
        return [str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.is_file()]

    def find(self, name: str) -> str | None:
        """The entry ending in ``name`` (at any depth), or None."""
        hits = sorted((n for n in self.names() if n == name or n.endswith("/" + name)), key=len)
        return hits[0] if hits else None

    def load(self, entry: str) -> Any:
        if entry.endswith(".json"):
            return json.loads(self.read_bytes(entry))
        if entry.endswith(".safetensors"):
            from safetensors.torch import load

            return load(self.read_bytes(entry))
        import io

        try:
            return torch.load(io.BytesIO(self.read_bytes(entry)), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(f"cannot read {entry} in {self.path}: {str(exc).splitlines()[0]}") from None

    def read_bytes(self, entry: str) -> bytes:
        """The entry's bytes, read within bounds (:func:`check_entry`): a zip bomb is refused
        before it is inflated, and no read goes past the size the archive declares."""
        if self.zip is not None:
            info = self.zip.getinfo(entry)
            check_entry(entry, size=info.file_size, packed=info.compress_size, where=self.path)
            with self.zip.open(info) as f:
                data = f.read(info.file_size + 1)
            if len(data) > info.file_size:
                raise InputError(f"{entry} in {self.path} inflates beyond the size the zip declares; "
                                 f"the archive is damaged or hostile")
            return data
        p = self.path / entry
        check_entry(entry, size=p.stat().st_size, packed=None, where=self.path)
        return p.read_bytes()


MAX_ENTRY_BYTES = 2 << 30
"""Largest file of a DreamSim release read (its largest checkpoint, OpenCLIP ViT-B/32, is ~0.6 GB)."""
MAX_JSON_BYTES = 16 << 20
"""Largest JSON file (configurations) read."""
MAX_RATIO = 50.0
"""Largest compression ratio of a zip entry: weights compress ~1.1x, a zip bomb 1000x."""


def check_entry(entry: str, *, size: int, packed: int | None, where: Path) -> None:
    """Refuse to read an entry larger than the release holds, a zip entry whose compression ratio
    marks a bomb, or one that would not fit in the memory available."""
    from robustbench_iqa.data.memory import check_fits, fmt_bytes

    cap = MAX_JSON_BYTES if entry.endswith(".json") else MAX_ENTRY_BYTES
    if size > cap:
        raise InputError(f"{entry} in {where} is {fmt_bytes(size)}, more than any file of a DreamSim release "
                         f"({fmt_bytes(cap)}); refusing to read it")
    if packed is not None and size > (1 << 20) and size > MAX_RATIO * max(packed, 1):
        raise InputError(f"{entry} in {where} inflates {size / max(packed, 1):.0f}x ({fmt_bytes(packed)} to "
                         f"{fmt_bytes(size)}): a zip bomb, not a checkpoint; refusing to read it")
    check_fits(2.0 * size, what=f"reading {entry} of {where}")


def _member_state(raw: Any, member: Member, source: str) -> dict[str, torch.Tensor]:
    """One ViT's state in this adapter's names, from the official checkpoint format."""
    sd = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(sd, dict):
        raise InputError(f"{source} holds no state dict")
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        if k.startswith("pos_drop."):
            k = "norm_pre." + k[len("pos_drop."):]
        if k.startswith(("head.", "norm.")) and not member.proj_dim:
            continue  # DINO's final norm (and any head) are unused: its feature is block 11's token
        out[k] = v
    return out


def _merge_lora(state: dict[str, torch.Tensor], lora: dict[str, torch.Tensor], config: dict[str, Any],
                n_members: int) -> int:
    """Add ``alpha / r * B @ A`` (``alpha / sqrt(r)`` with rsLoRA) to each adapted weight; return
    how many weights were updated."""
    r = int(config["r"])
    scale = float(config["lora_alpha"]) / (math.sqrt(r) if config.get("use_rslora") else r)
    if config.get("fan_in_fan_out"):
        raise InputError("DreamSim LoRA with fan_in_fan_out=True is not supported")
    merged = 0
    for key, a in lora.items():
        if ".lora_A." not in key:
            continue
        b = lora.get(key.replace(".lora_A.", ".lora_B."))
        if b is None:
            raise InputError(f"DreamSim LoRA file has {key} without its lora_B")
        module = key.split(".lora_A.")[0]
        module = module.split("extractor_list.", 1)[-1]  # "<i>.model.blocks.<j>.attn.qkv"
        index, _, rest = module.partition(".model.")
        if not index.isdigit() or int(index) >= n_members:
            raise InputError(f"DreamSim LoRA key {key} names no ensemble member")
        target = f"members.{index}.{rest}.weight"
        if target not in state:
            raise InputError(f"DreamSim LoRA key {key} adapts {target}, which the ensemble lacks")
        w = state[target]
        delta = (b.reshape(b.shape[0], -1).double() @ a.reshape(a.shape[0], -1).double()).reshape(w.shape)
        state[target] = (w.double() + scale * delta).to(w.dtype)
        merged += 1
    return merged


def dreamsim_state_from_release(path: Path, *, dino: Path | None = None,
                                ensemble: tuple[Member, ...] = ENSEMBLE) -> tuple[dict[str, torch.Tensor], list[Path]]:
    """This adapter's state dict from DreamSim's cache folder or release zip (see the module
    docstring), with the LoRA update merged; and the files read besides ``path``."""
    import torch.hub

    rel = _Release(path)
    extra: list[Path] = []
    state: dict[str, torch.Tensor] = {}
    needed = [m.file for m in ensemble if m.file != DINO_FILE] + [f"{LORA_DIR}/adapter_config.json"]
    absent = [n for n in needed if rel.find(n) is None]
    if not (rel.find(f"{LORA_DIR}/adapter_model.safetensors") or rel.find(f"{LORA_DIR}/adapter_model.bin")):
        absent.append(f"{LORA_DIR}/adapter_model.safetensors (or .bin)")
    if absent:
        raise InputError(f"{path} is not DreamSim's release (zip or dreamsim() cache folder): it lacks "
                         f"{', '.join(absent)} (all in {DREAMSIM_URL})")
    for i, member in enumerate(ensemble):
        if member.file == DINO_FILE:
            candidates = ([dino] if dino is not None else []) + [
                (path if path.is_dir() else path.parent) / "checkpoints" / DINO_FILE,
                Path(torch.hub.get_dir()) / "checkpoints" / DINO_FILE]
            entry = rel.find(DINO_FILE)
            if entry is not None and dino is None:
                raw, source = rel.load(entry), f"{path}:{entry}"
            else:
                found = next((c for c in candidates if c.is_file()), None)
                if found is None:
                    raise InputError(
                        f"DreamSim's DINO backbone {DINO_FILE} ({DINO_URL}; fetched by torch.hub when "
                        f"dreamsim() first runs) was not found at {', '.join(str(c) for c in candidates)}: "
                        "copy it to one of these, or pass dino=PATH"
                    )
                raw, source = torch.load(found, map_location="cpu", weights_only=True), str(found)
                extra.append(found)
        else:
            entry = rel.find(member.file)
            if entry is None:
                raise InputError(f"{path} lacks {member.file}, DreamSim's {member.name} backbone "
                                 f"(in the release zip {DREAMSIM_URL})")
            raw, source = rel.load(entry), f"{path}:{entry}"
        for k, v in _member_state(raw, member, source).items():
            state[f"members.{i}.{k}"] = v
    config_entry = rel.find(f"{LORA_DIR}/adapter_config.json")
    model_entry = rel.find(f"{LORA_DIR}/adapter_model.safetensors") or rel.find(f"{LORA_DIR}/adapter_model.bin")
    if config_entry is None or model_entry is None:
        raise InputError(f"{path} lacks DreamSim's LoRA adapter ({LORA_DIR}/adapter_config.json and "
                         f"adapter_model.safetensors or .bin)")
    merged = _merge_lora(state, rel.load(model_entry), rel.load(config_entry), len(ensemble))
    if merged == 0:
        raise InputError(f"{path}: DreamSim's LoRA adapter {model_entry} holds no lora_A/lora_B weights")
    return state, extra


def create_dreamsim(weights: str | Path | None = None, *, input_size: Size = IMAGE_SIZE,
                    dino: str | Path | None = None) -> DreamSim:
    """Build DreamSim with the suite's ``weights`` semantics (see :mod:`.weights`)."""
    kind, path = parse_weights(weights)
    if kind in (WeightsKind.PRETRAINED, WeightsKind.PRETRAINED_BASE):
        raise WeightsUnavailableError(
            f"DreamSim's weights are not downloaded by this suite: download {DREAMSIM_URL} and {DINO_URL} "
            "where there is network and pass the zip (or dreamsim()'s cache folder) as weights=PATH"
        )
    if dino is not None and kind is not WeightsKind.PATH:
        raise InputError("dreamsim: dino=PATH completes DreamSim's release given as weights=PATH")
    model = DreamSim(input_size=input_size)
    if path is None:
        model.weights_source = WeightsSource(kind, "random initialisation")
        return model
    dino_path = Path(dino).expanduser() if dino is not None else None
    if dino_path is not None and not dino_path.is_file():
        raise InputError(f"dreamsim: DINO backbone file not found: {dino_path}")
    files = [weights_file("DreamSim weights", path)] if path.is_file() else []
    if path.is_file() and not zipfile.is_zipfile(path):
        load_checkpoint(model, path, what="the DreamSim adapter (members.<i>.*)")
        model.weights_source = WeightsSource(kind, "state dict of the DreamSim adapter", tuple(files))
        return model
    state, extra = dreamsim_state_from_release(path, dino=dino_path)
    missing = load_state_into(model, state, what="the DreamSim ensemble", source=str(path))
    if missing:
        raise InputError(f"{path} does not hold the whole DreamSim ensemble: missing {missing[:3]}")
    if path.is_dir():
        files += [weights_file(f"DreamSim {p.parent.name + '/' if p.parent != path else ''}{p.name}", p)
                  for p in sorted(path.rglob("*")) if p.is_file() and _used(p)]
    files += [weights_file("DINO backbone", p) for p in extra]
    model.weights_source = WeightsSource(
        kind, "DreamSim release (" + ("zip" if path.is_file() else "cache folder") + "), LoRA merged", tuple(files))
    return model


def _used(p: Path) -> bool:
    return p.name in {m.file for m in ENSEMBLE} or p.parent.name == LORA_DIR
