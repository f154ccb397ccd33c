"""IQA model adapters: every model split into backbone (``features``) + head."""

from robustbench_iqa.models.base import Backbone, IQAModel, Mode
from robustbench_iqa.models.registry import (
    MODELS,
    ModelInfo,
    create_model,
    describe_model,
    list_models,
    model_info,
    register_model,
    register_prefix,
)

__all__ = [
    "MODELS",
    "Backbone",
    "IQAModel",
    "Mode",
    "ModelInfo",
    "create_model",
    "describe_model",
    "list_models",
    "model_info",
    "register_model",
    "register_prefix",
]
