"""``robustbench-iqa weights check|convert``: load a model's weights, say what was loaded.

``check`` builds the model from ``--weights`` (any official checkpoint format the model
reads: pyiqa ``.pth``, the HyperIQA authors' ``.pkl``, KonCept512's Keras ``.h5``, DreamSim's
release zip or cache folder, the ``lpips``/``DISTS_pytorch`` head files with their ImageNet
trunk) and prints the format, every file read with its SHA-256, the evaluation protocol and
the parameter count.  ``convert`` does the same and writes the model's state dict as one
``.safetensors`` file, which ``--weights`` then loads directly.  A missing piece (a trunk, a
DINO backbone, a LoRA adapter) is an ``error:`` line naming the file and where it was looked
for (exit 2).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from robustbench_iqa.errors import InputError


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("weights", help="check or convert a model's weights (official checkpoint formats)",
                       description="Load a model's weights from an official checkpoint and report what was "
                                   "loaded, from where, with SHA-256 (check), or save them as safetensors (convert).")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    for name, text in (("check", "load the weights and print what was loaded"),
                       ("convert", "load the weights and save the model's state dict as .safetensors")):
        a = actions.add_parser(name, help=text, description=text)
        a.add_argument("--model", required=True, help="registered model name (see `robustbench-iqa list models`)")
        a.add_argument("--weights", required=True,
                       help="checkpoint file or folder, or 'pretrained' (download or local caches)")
        a.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                       help="a keyword option of the model (repeatable), e.g. trunk=alexnet-owt-7be5be79.pth, "
                            "dino=dino_vitbase16_pretrain.pth, crops=random, input_size=384x512")
        if name == "convert":
            a.add_argument("--out", required=True, help="the .safetensors file to write")
        a.add_argument("--json", action="store_true", help="print one JSON object instead of text")
        a.set_defaults(func=run)


def parse_model_options(items: list[str]) -> dict[str, Any]:
    """``["num_crops=25", "crops=random"]`` -> ``{"num_crops": 25, "crops": "random"}`` (ints and
    floats are converted; everything else stays a string)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--model-option must look like KEY=VALUE, got {item!r}")
        text: Any = value.strip()
        for cast in (int, float):
            try:
                text = cast(text)
                break
            except ValueError:
                continue
        out[key.strip()] = text
    return out


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from robustbench_iqa.models.registry import create_model

    options = parse_model_options(args.model_option)
    out = Path(args.out) if args.action == "convert" else None
    if out is not None and out.suffix != ".safetensors":
        raise InputError(f"--out must be a .safetensors file, got {out}")
    model = create_model(args.model, weights=args.weights, **options)
    source = model.weights_source
    report: dict[str, Any] = {
        "model": args.model,
        "weights": source.describe() if source is not None else {"kind": "shipped or built-in"},
        "protocol": model.protocol,
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }
    if out is not None:
        from safetensors.torch import save_model

        from robustbench_iqa.provenance import file_sha256

        out.parent.mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            save_model(model, str(out))
        report["written"] = {"path": str(out), "sha256": file_sha256(out)}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"model: {args.model} ({report['parameters']:,} parameters)")
    for line in (source.lines() if source is not None else ["weights: shipped or built-in"]):
        print(line)
    print("protocol: " + (", ".join(f"{k}={v}" for k, v in model.protocol.items()) or "none"))
    if out is not None:
        print(f"written: {out}  sha256={report['written']['sha256']}")
        print(f"load it with: --model {args.model} --weights {out}")
    return 0
