"""Attacks on IQA scores and on certified defenses.

- :mod:`robustbench_iqa.attacks.base`: the records, the result and the projected-gradient loop (written once:
  best iterate, restarts, random start);
- :mod:`robustbench_iqa.attacks.gradient`: FGSM, I-FGSM, MI-FGSM, PGD;
  :mod:`robustbench_iqa.attacks.perceptual`: texture-masked attack;
  :mod:`robustbench_iqa.attacks.korhonen`: Korhonen & You's attack; :mod:`robustbench_iqa.attacks.madc`: MAD competition;
  :mod:`robustbench_iqa.attacks.bounded`: PGD under a perceptual (SSIM / default-fr) bound;
  :mod:`robustbench_iqa.attacks.universal`: universal adversarial perturbation;
- :mod:`robustbench_iqa.attacks.search`: the query (black-box) loop; :mod:`robustbench_iqa.attacks.square`: Square attack;
  :mod:`robustbench_iqa.attacks.sparse`: sparse / one-pixel attack; :mod:`robustbench_iqa.attacks.random_search`:
  (1+1)-ES random search;
- :mod:`robustbench_iqa.attacks.eot`: EOT objectives for randomized defenses;
- :mod:`robustbench_iqa.attacks.checks`: attack-strength checks (flags);
- :mod:`robustbench_iqa.attacks.feature_space`: audit of FS-IQA's Input Variation Estimator premise;
- :mod:`robustbench_iqa.attacks.torchattacks_adapter`: IQA models as classifiers for torchattacks;
- :mod:`robustbench_iqa.attacks.scores`: absolute/relative gain, robustness score, integral score with t-intervals;
- :mod:`robustbench_iqa.attacks.similarity`: PSNR and SSIM; :mod:`robustbench_iqa.attacks.calibration` and
  :mod:`robustbench_iqa.attacks.presets`: budgets calibrated to a visible-quality floor.
"""

from robustbench_iqa.attacks.base import Attack, AttackRecord, AttackResult, GradientAttack
from robustbench_iqa.attacks.bounded import PerceptualBoundedAttack
from robustbench_iqa.attacks.calibration import FLOORS, Calibration, QualityFloor, calibrate_budget
from robustbench_iqa.attacks.checks import (
    IMAGE_FLAGS,
    Flag,
    ImageCheck,
    MaskingCheck,
    Thresholds,
    check_records,
    compare_white_black,
    flag_counts,
    mark_masking,
)
from robustbench_iqa.attacks.eot import Aggregate, EOTScore, NoiseMode, eot_objective, soft_median
from robustbench_iqa.attacks.feature_space import FeatureAttackResult, feature_space_attack
from robustbench_iqa.attacks.gradient import FGSM, IFGSM, MIFGSM, PGD
from robustbench_iqa.attacks.korhonen import KorhonenAttack, spatial_activity_map
from robustbench_iqa.attacks.madc import MADC
from robustbench_iqa.attacks.objective import Objective, Target
from robustbench_iqa.attacks.perceptual import TextureMaskedAttack, texture_mask
from robustbench_iqa.attacks.random_search import RandomSearch
from robustbench_iqa.attacks.registry import attack_info, create_attack, list_attacks
from robustbench_iqa.attacks.scores import (
    BudgetSummary,
    MeanCI,
    RobustnessSummary,
    absolute_gain,
    integral_score,
    mean_ci,
    relative_gain,
    robustness_score,
    summarize,
    summarize_budgets,
)
from robustbench_iqa.attacks.search import QueryAttack
from robustbench_iqa.attacks.similarity import psnr, ssim
from robustbench_iqa.attacks.sparse import SparseAttack
from robustbench_iqa.attacks.square import SquareAttack
from robustbench_iqa.attacks.threat import ThreatModel
from robustbench_iqa.attacks.torchattacks_adapter import IQAClassifier
from robustbench_iqa.attacks.universal import UniversalPerturbation

__all__ = [
    "FGSM",
    "FLOORS",
    "IFGSM",
    "IMAGE_FLAGS",
    "MADC",
    "MIFGSM",
    "PGD",
    "Aggregate",
    "Attack",
    "AttackRecord",
    "AttackResult",
    "BudgetSummary",
    "Calibration",
    "EOTScore",
    "FeatureAttackResult",
    "Flag",
    "GradientAttack",
    "IQAClassifier",
    "ImageCheck",
    "KorhonenAttack",
    "MaskingCheck",
    "MeanCI",
    "NoiseMode",
    "Objective",
    "PerceptualBoundedAttack",
    "QualityFloor",
    "QueryAttack",
    "RandomSearch",
    "RobustnessSummary",
    "SparseAttack",
    "SquareAttack",
    "Target",
    "TextureMaskedAttack",
    "ThreatModel",
    "Thresholds",
    "UniversalPerturbation",
    "absolute_gain",
    "attack_info",
    "calibrate_budget",
    "check_records",
    "compare_white_black",
    "create_attack",
    "eot_objective",
    "feature_space_attack",
    "flag_counts",
    "integral_score",
    "list_attacks",
    "mark_masking",
    "mean_ci",
    "psnr",
    "relative_gain",
    "robustness_score",
    "soft_median",
    "spatial_activity_map",
    "ssim",
    "summarize",
    "summarize_budgets",
    "texture_mask",
]
