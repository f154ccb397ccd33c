"""robustbench_iqa: certify, attack and audit the adversarial robustness of IQA models.

The public API in a few names::

    from robustbench_iqa import create_model, create_dataset
    from robustbench_iqa.certify import FeatureSmoothedIQA
"""

from robustbench_iqa.data import IQADataset, create_dataset, list_datasets
from robustbench_iqa.errors import InputError
from robustbench_iqa.models import IQAModel, Mode, create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "IQADataset",
    "IQAModel",
    "InputError",
    "Mode",
    "__version__",
    "create_dataset",
    "create_model",
    "list_datasets",
    "list_models",
]
