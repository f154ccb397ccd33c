"""What a worker holds while it runs units of work: models, defenses, the dataset, seeds.

A :class:`Workspace` builds each model and defense once and serves many units (the
in-process executor has one; each Ray actor has its own).  Images are loaded per
unit from the dataset.  Randomness is derived, never global: every unit draws its
noise from generators seeded by the run seed and the unit's own key
(:func:`derived_seed`), so a unit gives the same rows on any worker, in any order,
after any restart.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from robustbench_iqa.errors import InputError
from robustbench_iqa.provenance import file_sha256
from robustbench_iqa.studies.base import Unit
from robustbench_iqa.studies.context import Batch as Batch
from robustbench_iqa.studies.context import CertifiedBatch as CertifiedBatch
from robustbench_iqa.studies.context import Stopwatch as Stopwatch

if TYPE_CHECKING:
    from robustbench_iqa.certify.defense import CertifiedDefense
    from robustbench_iqa.data.base import IQADataset
    from robustbench_iqa.models.base import IQAModel
    from robustbench_iqa.runner.config import VerifyConfig
    from robustbench_iqa.runner.plan import PlannedInput


def derived_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed from the run seed and the identity of one unit of work (CRC-32 based, stable)."""
    text = "\x1f".join(str(p) for p in (seed, *parts))
    hi = zlib.crc32(text.encode())
    lo = zlib.crc32(text[::-1].encode())
    return ((hi << 31) ^ lo) & ((1 << 63) - 1)


@dataclass
class Workspace:
    """Models, defenses and the dataset of one run, built once per process (see module doc)."""

    cfg: VerifyConfig
    inputs: dict[str, tuple[PlannedInput, ...]] = field(default_factory=dict)
    """Per model, the planned inputs (set by :class:`robustbench_iqa.runner.plan.Plan`)."""
    progress: Callable[[float], None] | None = None
    """Optional callback a long unit calls with the fraction of its images done."""
    step_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds per named step of the unit being run (:meth:`timed`); recorded with the unit."""
    _models: dict[str, IQAModel] = field(default_factory=dict)
    _defenses: dict[tuple[str, str, float], CertifiedDefense] = field(default_factory=dict)
    _dataset: IQADataset | None = None
    _warm: set[tuple[str, str, float]] = field(default_factory=set)

    # -------------------------------------------------------------- building
    @property
    def device(self) -> torch.device:
        return torch.device(self.cfg.device)

    def model(self, name: str) -> IQAModel:
        if name not in self._models:
            from robustbench_iqa.models import create_model
            from robustbench_iqa.runner.config import options_of

            self._models[name] = create_model(name, weights=self.cfg.weights.get(name), device=self.cfg.device,
                                              **options_of(self.cfg, name))
        return self._models[name]

    def defense(self, model: str, name: str, sigma: float) -> CertifiedDefense:
        key = (model, name, float(sigma))
        if key not in self._defenses:
            self._defenses[key] = build_defense(self.cfg, self.model(model), name, sigma)
        return self._defenses[key]

    def dataset(self) -> IQADataset:
        """The configured split of the configured dataset, first ``limit`` images."""
        if self._dataset is None:
            self._dataset = open_split(self.cfg)
        return self._dataset

    # ---------------------------------------------------------------- inputs
    def batch(self, model: str, ids: tuple[str, ...]) -> Batch:
        """The images ``ids`` (input identities of the plan) as one batch on the device."""
        from robustbench_iqa.runner.plan import planned_inputs

        if model not in self.inputs:
            self.inputs[model] = planned_inputs(self.dataset(), full_reference=self.model(model).full_reference)
        by_id = {p.id: p for p in self.inputs[model]}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise InputError(f"inputs {missing[:3]} are not in the dataset as this worker sees it "
                             "(the data changed since the run was planned?)")
        ds = self.dataset()
        xs, refs, names, targets = [], [], [], []
        fr = self.model(model).full_reference
        for i in ids:
            p = by_id[i]
            x, ref = ds.load(p.index)
            xs.append(x)
            if fr:
                if ref is None:
                    raise InputError(f"{p.name}: the FR model {model!r} needs a reference image")
                refs.append(ref)
            names.append(p.name)
            targets.append(p.target)
        shapes = {tuple(t.shape) for t in xs}
        if len(shapes) != 1:
            raise InputError(f"images of one batch have different sizes {sorted(shapes)}; set `size` in the "
                             "config (e.g. \"384x512\") or batch_size = 1")
        dev = self.device
        x = torch.stack(xs).to(dev)
        r = torch.stack(refs).to(dev) if fr else None
        return Batch(tuple(ids), tuple(names), x, r, tuple(targets))

    # ------------------------------------------------------------ randomness
    def generator(self, unit: Unit, *parts: object) -> torch.Generator:
        """A fresh generator on the device, seeded from the run seed, the unit's key and ``parts``."""
        return torch.Generator(device=self.device).manual_seed(derived_seed(self.cfg.seed, unit.key, *parts))

    def warm_up(self, model: str, defense: str, sigma: float, batch: Batch) -> None:
        """Run the model and defense once (lazy initialization, allocator) before anything is timed."""
        key = (model, defense, float(sigma))
        if key in self._warm:
            return
        self._warm.add(key)
        m = self.model(model)
        x, ref = batch.x[:1], None if batch.ref is None else batch.ref[:1]
        with torch.no_grad():
            m(x, ref)
            if defense != "none":
                d = self.defense(model, defense, sigma)
                d.predict(x, ref, n=min(self.cfg.n, 100), generator=torch.Generator(device=self.device).manual_seed(0))

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Add the wall seconds of the block to ``step_seconds[step]`` (device synchronised)."""
        with Stopwatch(self.device) as sw:
            yield
        self.step_seconds[step] = self.step_seconds.get(step, 0.0) + sw.seconds

    def tick(self, fraction: float) -> None:
        if self.progress is not None:
            self.progress(fraction)


def open_split(cfg: VerifyConfig) -> IQADataset:
    """The configured part (``split``) of the configured dataset at its working size and policy,
    first ``limit`` images: the official set where the dataset has an official split, else the
    seeded split by ``split_seed`` (:meth:`~robustbench_iqa.data.base.IQADataset.select`)."""
    from robustbench_iqa.data import create_dataset
    from robustbench_iqa.data.images import parse_dataset_size

    ds = create_dataset(cfg.dataset, root=cfg.root, size=parse_dataset_size(cfg.size), resize=cfg.resize,
                        **cfg.dataset_options)
    return ds.select(cfg.split, seed=cfg.split_seed).head(cfg.limit)


def dataset_settings(cfg: VerifyConfig) -> dict[str, Any]:
    """What the run records of its data: name, size of the whole set, working size and policy,
    score range and direction, and the split (official set, or seed, fraction and grouping)."""
    from robustbench_iqa.data import create_dataset
    from robustbench_iqa.data.images import parse_dataset_size

    full = create_dataset(cfg.dataset, root=cfg.root, size=parse_dataset_size(cfg.size), resize=cfg.resize,
                        **cfg.dataset_options)
    ds = full.select(cfg.split, seed=cfg.split_seed)
    return {"name": ds.name, "samples": len(full), "size": list(ds.size) if ds.size else None,
            "resize": str(ds.resize.value), "higher_better": ds.higher_better,
            "score_range": list(ds.score_range), "split": dict(ds.selection),
            "score_column": ds.extra.get("score_column")}


def checkpoint_for(cfg: VerifyConfig, model: str, defense: str, sigma: float) -> str | None:
    """The configured checkpoint of ``defense`` on ``model`` at ``sigma``, if any.

    Keys of ``checkpoints``, most specific first: ``"model:defense@sigma"``,
    ``"model:defense"``, and for the defense registered with ``artifact_bare_keys``
    (FS-IQA heads) also ``"model@sigma"`` and ``"model"``.
    """
    s = f"@{float(sigma):g}"
    keys = [f"{model}:{defense}{s}", f"{model}:{defense}"]
    if _bare_keys(cfg, defense):
        keys += [f"{model}{s}", model]
    return next((cfg.checkpoints[k] for k in keys if k in cfg.checkpoints), None)


def _bare_keys(cfg: VerifyConfig, defense: str) -> bool:
    """Whether bare ``"model"`` keys of ``checkpoints`` name the artifact of ``defense``."""
    from robustbench_iqa.certify.defense import DEFENSES

    r = cfg.registered(defense)
    return r in DEFENSES and bool(DEFENSES.metadata(r).get("artifact_bare_keys"))


def build_defense(cfg: VerifyConfig, model: IQAModel, name: str, sigma: float) -> CertifiedDefense:
    """The defense ``name`` around ``model`` at ``sigma``, with its configured trained artifact (given to
    the keyword the defense names for it) and its options (``[verify.defense.<name>]``)."""
    from robustbench_iqa.certify.defense import DEFENSES, create_defense
    from robustbench_iqa.certify.options import artifact_option
    from robustbench_iqa.registry import did_you_mean

    table = cfg.defense_table(name)
    registered = table.defense
    if registered not in DEFENSES:
        known = sorted({*DEFENSES.names(), *cfg.defense_tables})
        raise InputError(f"verify: unknown defense {name!r}{did_you_mean(name, known)}; known: {', '.join(known)}")
    options: dict[str, Any] = dict(table.build)
    path = checkpoint_for(cfg, model.name, name, sigma)
    key = artifact_option(registered)
    if path is not None:
        if key is None:
            raise InputError(f"verify: checkpoints key for {model.name}:{name} given, but {name!r} uses no "
                             "trained artifact")
        if key in options:
            raise InputError(f"verify: the artifact of {name!r} is given twice: in checkpoints and as "
                             f"`verify.defense.{name}.{key}`")
        options[key] = path
    try:
        return create_defense(registered, model, sigma=float(sigma), **options)
    except InputError as exc:
        if path is not None or key is None or key in options:
            raise
        ckpt = f"{model.name}@{float(sigma):g}" if _bare_keys(cfg, name) else f"{model.name}:{name}@{float(sigma):g}"
        raise InputError(f"{exc}; in the verify config: checkpoints = {{ \"{ckpt}\" = \"PATH\" }}") from None


def check_checkpoint_keys(cfg: VerifyConfig) -> None:
    """Every key of ``checkpoints`` and ``weights`` must name a configured model (and defense, sigma)."""
    sig = {f"{s:g}" for s in cfg.sigmas()}
    bare = any(_bare_keys(cfg, d) for d in cfg.defenses)
    for key in cfg.checkpoints:
        head, _, s = key.partition("@")
        model, _, defense = head.partition(":")
        ok = model in cfg.models and (not s or s in sig) and (defense in cfg.defenses if defense else bare)
        if not ok:
            raise InputError(f"verify: checkpoints key {key!r} matches no configured model"
                             f"{'' if not defense else ':defense'}{'' if not s else '@sigma'} "
                             f"(models {list(cfg.models)}, defenses {list(cfg.defenses)}, sigma {sorted(sig)})")
    for key in cfg.weights:
        if key not in cfg.models:
            raise InputError(f"verify: weights key {key!r} is not one of the models {list(cfg.models)}")
    from robustbench_iqa.runner.config import options_of

    named = {m for m in cfg.models if options_of(cfg, m)}
    for key in cfg.model_options:
        if key.rpartition(".")[0] not in named:
            raise InputError(f"verify: model_options key {key!r} names no configured model {list(cfg.models)}")


def weights_identity(cfg: VerifyConfig, name: str) -> str:
    """SHA-256 of the weights a model is built from (local file or shipped), else how it was built."""
    from robustbench_iqa.models.embedded import shipped_weights

    path = cfg.weights.get(name)
    if path == "random":
        return "RANDOM (weights = \"random\": random initialisation, scores mean nothing about quality)"
    if path in ("pretrained", "pretrained-base"):
        return f"{path} (published weights through pyiqa/timm/torchvision)"
    if path is not None:
        return file_sha256(path)
    p = shipped_weights(name)
    if p.is_file():
        return file_sha256(p)
    return "the model's own local default weights"


def defense_identity(defense: CertifiedDefense) -> str | None:
    """SHA-256 of a defense's trained artifact (FS-IQA heads, a denoiser), if it has one."""
    art = getattr(defense, "artifact", None)
    return file_sha256(art) if art is not None and Path(art).is_file() else None
