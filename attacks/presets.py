"""Budget presets per attack, calibrated to a visible-quality floor on the embedded images.

Produced by ``OMP_NUM_THREADS=1 python scripts/calibrate_attack_budgets.py --out DIR``
(:func:`robustbench_iqa.attacks.calibration.calibrate_budget`; its rows are in
``benchmarks/attack-budgets.json``): for each attack and threat
model, the largest eps whose attacked images keep a mean PSNR >= 40 dB (``"psnr40"``)
or a mean SSIM >= 0.9 (``"ssim0.9"``) against the clean images, over the images the
attack changed.  Setting: ``default-nr``, target increase, the first 4 test images
of the embedded ``default`` dataset (96x128, split seed 0), 7 log-bisection steps
between hi/1000 and hi = 64/255 (Linf) or 8 (L2); gradient attacks with 10 steps,
Square and random search with 100 queries, the UAP trained for 20 steps on 8
training images.  The sparse attack has no eps preset: k changed pixels give
PSNR >= 10 log10(H W / k) (:mod:`robustbench_iqa.attacks.sparse`).

Entries in :data:`CAPPED` never reached the floor within the search: the attack's
own constraint or the sparsity of its changes keeps it above the floor at every
budget up to hi, and the entry is hi itself.

Linf presets do not depend on the image size.  PSNR depends on the mean squared
change, so at H x W an L2 budget keeps the same PSNR when scaled by
sqrt(H W / (96 * 128)) (:func:`preset_eps` does this; for SSIM the scaling is a
first approximation).
"""

from __future__ import annotations

import math

from robustbench_iqa.attacks.threat import ThreatModel, as_threat_model
from robustbench_iqa.errors import InputError

CALIBRATION_SIZE = (96, 128)
"""(H, W) of the images the presets were measured on."""

PRESETS: dict[tuple[str, str, str], float] = {
    ("fgsm", "l2", "psnr40"): 1.967,
    ("fgsm", "l2", "ssim0.9"): 4.419,
    ("fgsm", "linf", "psnr40"): 0.0104,
    ("fgsm", "linf", "ssim0.9"): 0.0169,
    ("ifgsm", "l2", "psnr40"): 1.967,
    ("ifgsm", "l2", "ssim0.9"): 4.186,
    ("ifgsm", "linf", "psnr40"): 0.01097,
    ("ifgsm", "linf", "ssim0.9"): 0.01882,
    ("korhonen", "l2", "psnr40"): 1.967,
    ("korhonen", "l2", "ssim0.9"): 3.561,
    ("korhonen", "linf", "psnr40"): 0.01097,
    ("korhonen", "linf", "ssim0.9"): 0.01986,
    ("madc", "l2", "psnr40"): 1.863,
    ("madc", "l2", "ssim0.9"): 3.196,
    ("madc", "linf", "psnr40"): 0.0129,
    ("madc", "linf", "ssim0.9"): 0.02898,
    ("mifgsm", "l2", "psnr40"): 1.967,
    ("mifgsm", "l2", "ssim0.9"): 4.186,
    ("mifgsm", "linf", "psnr40"): 0.0104,
    ("mifgsm", "linf", "ssim0.9"): 0.01783,
    ("perceptual-bounded", "l2", "psnr40"): 2.312,
    ("perceptual-bounded", "l2", "ssim0.9"): 8.0,
    ("perceptual-bounded", "linf", "psnr40"): 0.0129,
    ("perceptual-bounded", "linf", "ssim0.9"): 0.251,
    ("pgd", "l2", "psnr40"): 1.863,
    ("pgd", "l2", "ssim0.9"): 3.374,
    ("pgd", "linf", "psnr40"): 0.0104,
    ("pgd", "linf", "ssim0.9"): 0.01783,
    ("random-search", "l2", "psnr40"): 1.863,
    ("random-search", "l2", "ssim0.9"): 3.966,
    ("random-search", "linf", "psnr40"): 0.01361,
    ("random-search", "linf", "ssim0.9"): 0.03408,
    ("square", "l2", "psnr40"): 1.863,
    ("square", "l2", "ssim0.9"): 8.0,
    ("square", "linf", "psnr40"): 0.05846,
    ("square", "linf", "ssim0.9"): 0.251,
    ("texture", "l2", "psnr40"): 5.195,
    ("texture", "l2", "ssim0.9"): 8.0,
    ("texture", "linf", "psnr40"): 0.04229,
    ("texture", "linf", "ssim0.9"): 0.08529,
    ("uap", "l2", "psnr40"): 1.967,
    ("uap", "l2", "ssim0.9"): 3.196,
    ("uap", "linf", "psnr40"): 0.01097,
    ("uap", "linf", "ssim0.9"): 0.0169,
}
"""(attack, norm, floor) -> eps at 96x128, as printed by the calibration script."""

CAPPED: frozenset[tuple[str, str, str]] = frozenset({
    ("perceptual-bounded", "l2", "ssim0.9"),   # its own bound keeps SSIM >= 0.95
    ("perceptual-bounded", "linf", "ssim0.9"),
    ("square", "l2", "ssim0.9"),               # few, local changes within 100 queries
    ("square", "linf", "ssim0.9"),
    ("texture", "l2", "ssim0.9"),              # changes only where texture hides them
})
"""Entries that stayed above the floor up to the search's upper end (see the module doc)."""


def preset_eps(attack: str, norm: ThreatModel | str, floor: str = "psnr40", *,
               size: tuple[int, int] | None = None) -> float:
    """The calibrated eps of ``attack`` under ``norm`` and ``floor``; L2 rescaled to images of ``size`` (H, W)."""
    n = as_threat_model(norm)
    key = (attack.lower(), n.value, floor)
    if key not in PRESETS:
        known = sorted({k[2] for k in PRESETS})
        raise InputError(f"no budget preset for attack {attack!r}, norm {n.value!r}, floor {floor!r} "
                         f"(floors: {', '.join(known)}; attacks: {', '.join(sorted({k[0] for k in PRESETS}))})")
    eps = PRESETS[key]
    if n is ThreatModel.L2 and size is not None:
        h, w = size
        if h < 1 or w < 1:
            raise InputError(f"size must be positive (H, W), got {size!r}")
        eps *= math.sqrt(h * w / (CALIBRATION_SIZE[0] * CALIBRATION_SIZE[1]))
    return eps
