"""Attacks on IQA scores and on certified defenses.

- :mod:`attacks.base`: the projected-gradient loop (written once) and the records;
- :mod:`attacks.gradient`: FGSM, I-FGSM, MI-FGSM, PGD; :mod:`attacks.perceptual`: texture-masked attack;
- :mod:`attacks.eot`: EOT objectives for randomized defenses;
- :mod:`attacks.feature_space`: audit of FS-IQA's Input Variation Estimator premise;
- :mod:`attacks.torchattacks_adapter`: IQA models as classifiers for torchattacks;
- :mod:`attacks.scores`: absolute/relative gain and robustness score with t-intervals.
"""

from attacks.base import AttackRecord, AttackResult, GradientAttack
from attacks.eot import Aggregate, EOTScore, NoiseMode, eot_objective, soft_median
from attacks.feature_space import FeatureAttackResult, feature_space_attack
from attacks.gradient import FGSM, IFGSM, MIFGSM, PGD
from attacks.objective import Objective, Target
from attacks.perceptual import TextureMaskedAttack, texture_mask
from attacks.registry import create_attack, list_attacks
from attacks.scores import (
    MeanCI,
    RobustnessSummary,
    absolute_gain,
    mean_ci,
    relative_gain,
    robustness_score,
    summarize,
)
from attacks.threat import ThreatModel
from attacks.torchattacks_adapter import IQAClassifier

__all__ = [
    "FGSM",
    "IFGSM",
    "MIFGSM",
    "PGD",
    "Aggregate",
    "AttackRecord",
    "AttackResult",
    "EOTScore",
    "FeatureAttackResult",
    "GradientAttack",
    "IQAClassifier",
    "MeanCI",
    "NoiseMode",
    "Objective",
    "RobustnessSummary",
    "Target",
    "TextureMaskedAttack",
    "ThreatModel",
    "absolute_gain",
    "create_attack",
    "eot_objective",
    "feature_space_attack",
    "list_attacks",
    "mean_ci",
    "relative_gain",
    "robustness_score",
    "soft_median",
    "summarize",
    "texture_mask",
]
