"""Datasets: the embedded default, KonIQ-10k, KADID-10k and generic CSV lists."""

from robustbench_iqa.data.base import IQADataset, IQASample
from robustbench_iqa.data.images import Resize, load_image, save_image
from robustbench_iqa.data.registry import create_dataset, list_datasets, register_dataset

__all__ = [
    "IQADataset",
    "IQASample",
    "Resize",
    "create_dataset",
    "list_datasets",
    "load_image",
    "register_dataset",
    "save_image",
]
