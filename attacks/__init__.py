"""Attacks on IQA scores and on certified defenses.

- :mod:`robustbench_iqa.attacks.base`: the projected-gradient loop (written once) and the records;
- :mod:`robustbench_iqa.attacks.gradient`: FGSM, I-FGSM, MI-FGSM, PGD; :mod:`robustbench_iqa.attacks.perceptual`: texture-masked attack;
- :mod:`robustbench_iqa.attacks.eot`: EOT objectives for randomized defenses;
- :mod:`robustbench_iqa.attacks.feature_space`: audit of FS-IQA's Input Variation Estimator premise;
- :mod:`robustbench_iqa.attacks.torchattacks_adapter`: IQA models as classifiers for torchattacks;
- :mod:`robustbench_iqa.attacks.scores`: absolute/relative gain and robustness score with t-intervals.
"""

from robustbench_iqa.attacks.base import AttackRecord, AttackResult, GradientAttack
from robustbench_iqa.attacks.eot import Aggregate, EOTScore, NoiseMode, eot_objective, soft_median
from robustbench_iqa.attacks.feature_space import FeatureAttackResult, feature_space_attack
from robustbench_iqa.attacks.gradient import FGSM, IFGSM, MIFGSM, PGD
from robustbench_iqa.attacks.objective import Objective, Target
from robustbench_iqa.attacks.perceptual import TextureMaskedAttack, texture_mask
from robustbench_iqa.attacks.registry import create_attack, list_attacks
from robustbench_iqa.attacks.scores import (
    MeanCI,
    RobustnessSummary,
    absolute_gain,
    mean_ci,
    relative_gain,
    robustness_score,
    summarize,
)
from robustbench_iqa.attacks.threat import ThreatModel
from robustbench_iqa.attacks.torchattacks_adapter import IQAClassifier

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
