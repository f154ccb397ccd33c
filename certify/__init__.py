"""Certified defenses for IQA models and their mathematics.

- :class:`FeatureSmoothedIQA` (FS-IQA, feature-space median smoothing) and its training;
- the MS_Cert percentile bounds (:mod:`robustbench_iqa.certify.bounds`);
- the Input Variation Estimator's spectral norm (:mod:`robustbench_iqa.certify.spectral`);
- sound input radii: certified Lipschitz bounds (:mod:`robustbench_iqa.lipschitz.composition`,
  :mod:`robustbench_iqa.lipschitz.gram_iteration`) and the local radius
  (:mod:`robustbench_iqa.certify.local_lipschitz`);
- input-space baselines MS, DMS, DMS-IQA, RS-Reg, Cert-Reg (via :func:`create_defense`);
- empirical defenses without a certificate (predict only; ``list_defenses(certified=False)``):
  JPEG, bit-depth, median, Gaussian blur, resize (:mod:`robustbench_iqa.certify.purification`),
  random resize-and-pad (:mod:`robustbench_iqa.certify.random_resize`) and a learned purifier
  (:mod:`robustbench_iqa.certify.purifier`).
"""

from robustbench_iqa.certify.bounds import order_statistic_indices, percentile_bounds
from robustbench_iqa.certify.defense import (
    CertifiedDefense,
    create_defense,
    list_defenses,
    register_defense,
)
from robustbench_iqa.certify.fs_iqa import (
    FeatureSmoothedIQA,
    load_fs_checkpoint,
    save_fs_checkpoint,
)
from robustbench_iqa.certify.heads import FTN, Scorer
from robustbench_iqa.certify.result import AbstainReason, CertifiedScore, Guarantee, RadiusKind
from robustbench_iqa.certify.spectral import SpectralNormEstimate, jacobian_spectral_norm
from robustbench_iqa.certify.training import train_fs_iqa

__all__ = [
    "FTN",
    "AbstainReason",
    "CertifiedDefense",
    "CertifiedScore",
    "FeatureSmoothedIQA",
    "Guarantee",
    "RadiusKind",
    "Scorer",
    "SpectralNormEstimate",
    "create_defense",
    "jacobian_spectral_norm",
    "list_defenses",
    "load_fs_checkpoint",
    "order_statistic_indices",
    "percentile_bounds",
    "register_defense",
    "save_fs_checkpoint",
    "train_fs_iqa",
]
