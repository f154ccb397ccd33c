"""Arguments and input handling shared by the subcommands.

Inputs come either from a registered dataset (``--dataset NAME [--root PATH]
[--limit K]``) or from files (``--image PATH`` repeatable, and ``--ref PATH``
for FR models: one reference for all images, or one per image).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from robustbench_iqa.errors import InputError

if TYPE_CHECKING:  # imported where used: this module must stay light (fast --help)
    import torch

    from robustbench_iqa.data.base import IQADataset
    from robustbench_iqa.models.base import IQAModel

RESIZE_CHOICES = ("none", "resize", "center-crop")
MAX_SAMPLES = 10_000_000
"""The most noise draws accepted (:data:`robustbench_iqa.validation.MAX_SAMPLES`, repeated here so that
parsing the command line imports no torch; a test keeps the two equal)."""

# -- argparse types: a bad value is refused while parsing, as one `error: argument --flag: ...` line --------
MAX_COUNT = 2**31 - 1
MAX_SEED = 2**63 - 1


def _number(text: str, kind: type) -> Any:
    try:
        v = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if kind is float and not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return v


def _int_in(lo: int, hi: int, what: str = "an integer") -> Callable[[str], int]:
    def parse(text: str) -> int:
        v = _number(text, int)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be {what} in [{lo}, {hi:,}], got {text!r}")
        return int(v)

    parse.__name__ = what.replace(" ", "_")
    return parse


positive_int = _int_in(1, MAX_COUNT)
"""An integer >= 1 (counts, steps, batch sizes, limits)."""
sample_count = _int_in(1, MAX_SAMPLES, "a sample count")
"""A number of noise draws, at most :data:`robustbench_iqa.validation.MAX_SAMPLES`."""
seed = _int_in(0, MAX_SEED, "a seed")
"""A seed, 0 <= seed < 2^63 (what torch and numpy generators accept)."""


def finite_float(text: str) -> float:
    return float(_number(text, float))


def positive_float(text: str) -> float:
    v = finite_float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return v


def nonneg_float(text: str) -> float:
    v = finite_float(text)
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return v


def probability(text: str) -> float:
    v = finite_float(text)
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text!r}")
    return v


def device(text: str) -> str:
    """A device this machine has (:func:`robustbench_iqa.validation.check_device`), kept as given."""
    from robustbench_iqa.validation import check_device

    try:
        check_device(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def seeded_generator(args: argparse.Namespace, seed: int | None = None) -> torch.Generator:
    """A ``torch.Generator`` on the run's ``--device`` seeded with ``seed`` (default ``--seed``).

    Noise is drawn where the data lives (no host-to-device copy per draw); the same seed gives
    the same rows on the same device (CPU and CUDA generators give different streams).
    """
    import torch

    return torch.Generator(device=torch.device(args.device)).manual_seed(args.seed if seed is None else seed)


def size(text: str) -> str:
    """``HxW`` whose image fits in memory (:func:`robustbench_iqa.data.images.parse_size`), kept as given."""
    try:
        parse_dataset_size(text)
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def split_name(text: str) -> str:
    """``--split``: a :class:`~robustbench_iqa.data.base.Split` name (or ``training``), kept as its value."""
    from robustbench_iqa.data.base import parse_split

    try:
        return parse_split(text).value
    except InputError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


SPLIT_HELP = ("part of the dataset: test (default), train, validation or all; the official set where the dataset "
              "has an official split (KonIQ-10k: training/validation/test from koniq10k_distributions_sets.csv), "
              "else a seeded 80/20 split by reference (see --split-seed)")


def add_split_args(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, override: bool = False) -> None:
    """``--split`` and ``--split-seed``; ``override``: default None (the verify config's values)."""
    where = " (default: the config's)" if override else ""
    p.add_argument("--split", type=split_name, default=None if override else "test", help=SPLIT_HELP + where)
    p.add_argument("--split-seed", type=seed, default=None if override else 0,
                   help="seed of the seeded split of a dataset without an official one "
                        + ("(default: the config's, 0)" if override else "(default: 0, as verify)"))


def max_pixels(text: str) -> int:
    return _int_in(64, MAX_SEED, "a pixel count")(text)


def check_output_dir(path: str | Path, *, flag: str = "--out") -> Path:
    """Check, before any work, that the folder ``path`` can be created (if absent) and written.

    Nothing is created: the nearest existing ancestor must be a writable folder
    (probed with a temporary file, so read-only file systems are caught too).
    """
    p = Path(path)
    probe_dir = p
    while not probe_dir.exists():
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise InputError(f"{flag} {p}: {probe_dir} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".write-test-", dir=probe_dir)
    except OSError as exc:
        raise InputError(f"{flag} {p} is not writable: {exc.strerror or exc} ({probe_dir})") from None
    os.close(fd)
    os.unlink(tmp)
    return p


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default-nr", help="registered model name (see `robustbench-iqa list`)")
    p.add_argument("--weights", default=None,
                   help="pretrained (the published weights), a local checkpoint file, or random (random "
                        "initialisation, tests only); required for published architectures (dbcnn, lpips, ...); "
                        "default: the model's own local weights (embedded models)")
    p.add_argument("--device", type=device, default="cpu", help="torch device, e.g. cpu or cuda:0 (default: cpu)")


DATASET_OPTION_HELP = ("a keyword option of the dataset (repeatable), e.g. score_column=MOS_zscore for KonIQ-10k's "
                       "0-100 target (default MOS, 1-5)")


def dataset_options(args: argparse.Namespace) -> dict[str, str]:
    """``--dataset-option KEY=VALUE`` (repeatable) as keyword options of the dataset (strings)."""
    out: dict[str, str] = {}
    for item in getattr(args, "dataset_option", None) or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--dataset-option must look like KEY=VALUE, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def add_input_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inputs")
    g.add_argument("--dataset", default=None, help="registered dataset name (e.g. default, koniq10k, kadid10k, csv)")
    g.add_argument("--root", default=None, help="local folder (or CSV file) of the dataset")
    g.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE", help=DATASET_OPTION_HELP)
    add_split_args(g)
    g.add_argument("--limit", type=positive_int, default=None, help="use at most this many images")
    g.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    g.add_argument("--ref", action="append", default=[], help="reference image for FR models (one, or one per --image)")
    g.add_argument("--size", type=size, default=None,
                   help="working size HxW, e.g. 384x512; `native` keeps each image's size (default: the dataset's)")
    g.add_argument("--resize", choices=RESIZE_CHOICES, default=None, help="resize policy")
    g.add_argument("--max-pixels", type=max_pixels, default=None,
                   help="downscale images with more pixels than this (aspect kept) before --size applies; "
                        "default: none (an image whose work cannot fit in memory is refused)")
    g.add_argument("--resize-ref", action="store_true",
                   help="FR: resize a reference of another size to its image's size (default: refuse the pair)")


def add_training_data_args(p: argparse.ArgumentParser) -> None:
    """Dataset flags of the training commands (the train/test split is made inside: the official one
    where the dataset has one, else the seeded 80/20 split by ``--split-seed``)."""
    p.add_argument("--dataset", default="default", help="registered dataset (default: default)")
    p.add_argument("--root", default=None, help="local folder of the dataset")
    p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE", help=DATASET_OPTION_HELP)
    p.add_argument("--size", type=size, default=None, help="working size HxW (default: the dataset's)")
    p.add_argument("--resize", default=None, help="resize policy")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="use at most this many images (train: of each part; train-denoiser: before the split)")


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object per line instead of a table")
    p.add_argument("--seed", type=seed, default=0, help="seed of the noise generator (default: 0)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}")


def build_model(args: argparse.Namespace) -> IQAModel:
    """The model of ``--model``/``--weights``; a loud warning when its weights are random."""
    from robustbench_iqa.models.registry import create_model

    model = create_model(args.model, weights=args.weights, device=args.device)
    origin = getattr(model, "weights_origin", None)
    if getattr(origin, "is_random", False):
        print(f"warning: model {args.model!r} has RANDOM weights ({origin}): its scores say nothing about image "
              "quality; every row says weights=random", file=sys.stderr)
    return model


def score_labels(model: Any, scorer: Any = None) -> dict[str, Any]:
    """What every shown score row carries: the orientation and range of the score (of ``scorer``, the
    defense, when given, else of the model; :mod:`robustbench_iqa.orientation`) and the model's weights."""
    from robustbench_iqa.orientation import score_fields

    s = scorer if scorer is not None else model
    return {**score_fields(lower_better=bool(s.lower_better), score_range=s.score_range),
            "weights": str(getattr(model, "weights_origin", "unknown"))}


RANDOM_ORIGINS = ("random", "pretrained-base")


def label_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Table columns after a command's own: ``scale`` (orientation and range), and ``weights`` when
    some row's model has random weights."""
    random = any(r.get("weights") in RANDOM_ORIGINS for r in rows)
    return ["scale"] + (["weights"] if random else [])


def parse_size(text: str | None) -> tuple[int, int] | None:
    from robustbench_iqa.data.images import parse_size as parse

    return parse(text)


def parse_dataset_size(text: str | None) -> tuple[int, int] | str | None:
    """``--size``: ``HxW``, ``native`` (None: each image's own size) or ``default`` / absent (the dataset's)."""
    from robustbench_iqa.data.images import parse_dataset_size as parse

    return parse(text)


@dataclass
class Item:
    """One input: a name, the image (3, H, W), its reference (or None), a score (or None), and its
    identity (name and content hash of the image and reference files; the key of its stored rows)."""

    name: str
    x: torch.Tensor
    ref: torch.Tensor | None
    score: float | None
    id: str = ""


def load_dataset(args: argparse.Namespace) -> IQADataset:
    from robustbench_iqa.data.registry import create_dataset

    ds = create_dataset(args.dataset, root=args.root, size=parse_dataset_size(args.size), resize=args.resize,
                        **dataset_options(args))
    ds = dataclasses.replace(ds, max_pixels=getattr(args, "max_pixels", None),
                             resize_ref=bool(getattr(args, "resize_ref", False)))
    return ds.select(args.split, seed=getattr(args, "split_seed", 0)).head(args.limit)


def check_input_args(args: argparse.Namespace) -> None:
    """Checks of the input flags that need no model: run them before building one."""
    check_limit(args.limit)
    if args.image and args.dataset:
        raise InputError("give either --dataset or --image, not both")
    if not args.image and not args.dataset:
        raise InputError("no input: give --dataset NAME or --image PATH")
    hw = parse_dataset_size(args.size)
    if isinstance(hw, tuple) and (args.resize or "resize") != "none":
        check_work_fits(args, hw, name=f"--size {args.size}", batch=work_batch(args, None))


def work_kind(args: argparse.Namespace) -> str:
    """Which row of :data:`robustbench_iqa.data.memory.WORK_BYTES_PER_PIXEL` the command's work is."""
    if _input_noise(getattr(args, "defense", "none")):
        return "noise"  # 64 noisy copies per forward pass, whatever the batch of images
    command = getattr(args, "command", "")
    return command if command in ("certify", "attack") else "forward"


def _input_noise(defense: str) -> bool:
    """Whether ``defense`` draws Gaussian noise in input space (its registered ``space`` and ``noise``)."""
    from robustbench_iqa.certify.defense import DEFENSES

    if defense == "none" or defense not in DEFENSES:
        return False
    meta = DEFENSES.metadata(defense)
    return meta.get("space") == "input" and bool(meta.get("noise", True))


def work_batch(args: argparse.Namespace, total: int | None) -> int:
    """Images whose work is in memory at once."""
    if work_kind(args) == "noise" or getattr(args, "out", None) is not None:
        return 1
    b = int(getattr(args, "batch_size", 1) or 1)
    return b if total is None else max(1, min(b, total))


def check_work_fits(args: argparse.Namespace, hw: tuple[int, int], *, name: str, batch: int) -> None:
    """Refuse an image whose work (:data:`~robustbench_iqa.data.memory.WORK_BYTES_PER_PIXEL`) cannot fit."""
    from robustbench_iqa.data.memory import (
        WORK_BYTES_PER_PIXEL,
        available_bytes,
        check_fits,
        max_pixels_within,
    )

    per_pixel = WORK_BYTES_PER_PIXEL[work_kind(args)] * batch
    need = float(hw[0]) * hw[1] * per_pixel
    free = available_bytes()
    hint = "use --size HxW or --max-pixels N to work at a smaller size"
    if free is not None and need > free:
        hint = f"use --size HxW or --max-pixels {max_pixels_within(0.8 * free, per_pixel)} to work at a smaller size"
    what = f"{getattr(args, 'command', 'the work')} of {name} at {hw[0]}x{hw[1]} (HxW)" + (f", {batch} images per batch" if batch > 1 else "")
    check_fits(need, what=what, hint=hint)


def iter_items(args: argparse.Namespace, model: IQAModel) -> tuple[int, Iterator[Item]]:
    """The inputs named on the command line, validated against the model's FR/NR mode."""
    from robustbench_iqa.data.images import Resize, load_image, load_pair
    from robustbench_iqa.runner.plan import InputIds, input_id

    check_input_args(args)
    from robustbench_iqa.validation import check_image_size, min_image_size

    ids = InputIds()  # one file listed twice is two rows, never one taken for the other
    smallest = min_image_size(model)
    wanted = parse_dataset_size(args.size)  # files: "default" and "native" are each file's own size
    size, resize = (wanted if isinstance(wanted, tuple) else None), Resize(args.resize or Resize.RESIZE)
    max_px, resize_ref = getattr(args, "max_pixels", None), bool(getattr(args, "resize_ref", False))
    if args.image:
        images = [Path(p) for p in args.image][: args.limit]
        refs = [Path(p) for p in args.ref]
        if model.full_reference:
            if not refs:
                raise InputError(f"model {args.model!r} is full-reference: give --ref PATH")
            if len(refs) not in (1, len(args.image)):
                raise InputError(f"give one --ref, or one per --image ({len(args.image)}), not {len(refs)}")
        elif refs:
            raise InputError(f"model {args.model!r} is no-reference: --ref is not used")

        batch = work_batch(args, len(images))

        def gen_files() -> Iterator[Item]:
            for i, p in enumerate(images):
                ref = None
                if model.full_reference:
                    r = refs[0] if len(refs) == 1 else refs[i]
                    x, ref = load_pair(p, r, size=size, resize=resize, max_pixels=max_px, resize_ref=resize_ref)
                else:
                    x = load_image(p, size=size, resize=resize, max_pixels=max_px)
                check_image_size(x.shape, minimum=smallest, what=str(p), model=args.model)
                check_work_fits(args, tuple(x.shape[-2:]), name=str(p), batch=batch)  # type: ignore[arg-type]
                yield Item(str(p), x, ref, None,
                           ids(input_id(str(p), p, r if model.full_reference else None), str(p)))
            _say_repeats(ids)

        return len(images), gen_files()
    if not args.dataset:
        raise InputError("no input: give --dataset NAME or --image PATH")
    ds = load_dataset(args)
    if model.full_reference and not ds.has_references:
        raise InputError(f"model {args.model!r} is full-reference but dataset {ds.name!r} has no references")

    batch = work_batch(args, len(ds))

    def gen_ds() -> Iterator[Item]:
        for i, s in enumerate(ds.samples):
            x, ref = ds.load(i)
            check_image_size(x.shape, minimum=smallest, what=s.name, model=args.model)
            check_work_fits(args, tuple(x.shape[-2:]), name=s.name, batch=batch)  # type: ignore[arg-type]
            yield Item(s.name, x, ref if model.full_reference else None, s.score,
                       ids(input_id(s.name, s.image, s.ref if model.full_reference else None), s.name))
        _say_repeats(ids)

    return len(ds), gen_ds()


def _say_repeats(ids: Any) -> None:
    note = ids.note()
    if note is not None:
        print(f"note: {note}", file=sys.stderr)


def batches(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    buf: list[Item] = []
    for it in items:
        buf.append(it)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def stack(items: list[Item], device: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    import torch

    shapes = {tuple(it.x.shape) for it in items}
    if len(shapes) != 1:
        raise InputError(f"images in one batch have different sizes {sorted(shapes)}; use --size HxW or --batch-size 1")
    x = torch.stack([it.x for it in items]).to(device)
    ref = None if items[0].ref is None else torch.stack([it.ref for it in items]).to(device)  # type: ignore[misc]
    return x, ref


def emit(rows: list[dict[str, Any]], *, as_json: bool, columns: list[str]) -> None:
    """Print rows as JSON lines or as an aligned table."""
    if as_json:
        for r in rows:
            print(json.dumps(r, default=_json_default))
        return
    if "scale" in columns:
        from robustbench_iqa.orientation import scale_text

        rows = [r if "scale" in r else {**r, "scale": scale_text(r)} for r in rows]
    print(format_table(rows, columns))


def _json_default(o: Any) -> Any:
    if hasattr(o, "value"):
        return o.value
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def progress_enabled(args: argparse.Namespace) -> bool:
    return not getattr(args, "no_progress", False) and sys.stderr is not None


def default_threads() -> int:
    """Torch threads per process: 1 on machines with up to 4 cores (where more threads than cores,
    or several processes, oversubscribe them: 4x slower measured on 2 shared cores), else half the
    cores, at most 8."""
    cores = os.cpu_count() or 1
    return 1 if cores <= 4 else min(8, cores // 2)


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: 1 on machines with up to 4 cores, else half the cores, "
                        "at most 8); recorded with the run")


def apply_threads(args: argparse.Namespace) -> int:
    """Set torch's thread count from ``--threads`` (or the default) and return it."""
    import torch

    n = args.threads if getattr(args, "threads", None) is not None else default_threads()
    torch.set_num_threads(n)
    return n
