"""IQA model adapters: every model split into backbone (``features``) + head."""

from robustbench_iqa.models.base import Backbone, IQAModel, Mode
from robustbench_iqa.models.registry import (
    create_model,
    describe_model,
    list_models,
    register_model,
    register_prefix,
)

__all__ = [
    "Backbone",
    "IQAModel",
    "Mode",
    "create_model",
    "describe_model",
    "list_models",
    "register_model",
    "register_prefix",
]
