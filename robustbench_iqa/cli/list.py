"""``robustbench-iqa list``: the registered models, datasets and defenses."""

from __future__ import annotations

import argparse

from robustbench_iqa.certify.defense import list_defenses
from robustbench_iqa.data.registry import describe_dataset, list_datasets
from robustbench_iqa.models.registry import describe_model, list_models


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("list", help="list models, datasets and defenses")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print("models:")
    for m in list_models():
        print(f"  {m:<18} {describe_model(m)}")
    print("datasets:")
    for d in list_datasets():
        print(f"  {d:<18} {describe_dataset(d)}")
    print("defenses:")
    for d in list_defenses():
        print(f"  {d}")
    return 0
