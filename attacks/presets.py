"""Budget presets per attack, read from the calibration that the calibration script writes.

``OMP_NUM_THREADS=1 python scripts/calibrate_attack_budgets.py --out DIR``
(:func:`robustbench_iqa.attacks.calibration.calibrate_budget`) writes
``DIR/attack-budgets.json``; the file shipped beside this module,
``attacks/attack-budgets.json`` (:data:`CALIBRATION_FILE`), is that output, and the presets
are read from it (nothing is copied by hand).  A new attack gets its presets by
calibrating it alone and merging its rows into the shipped file::

    python scripts/calibrate_attack_budgets.py --attacks NEW --out DIR --merge-into attacks/attack-budgets.json

For each attack and threat model the file holds the largest eps whose attacked images keep a
mean PSNR >= 40 dB (``"psnr40"``) or a mean SSIM >= 0.9 (``"ssim0.9"``) against the clean
images, over the images the attack changed.  Setting (recorded in the file's ``settings``):
``default-nr``, target increase, the first 4 test images of the embedded ``default`` dataset
(96x128, split seed 0), 7 log-bisection steps between hi/1000 and hi = 64/255 (Linf) or 8
(L2); gradient attacks with 10 steps, Square and random search with 100 queries, the UAP
trained for 20 steps on 8 training images.  With several calibrated models the preset is
the smallest eps over them.  The sparse attack has no eps preset: k changed pixels give
PSNR >= 10 log10(H W / k) (:mod:`robustbench_iqa.attacks.sparse`).

Entries in :func:`capped` never reached the floor within the search: the attack's own
constraint or the sparsity of its changes keeps it above the floor at every budget up to
hi, and the entry is hi itself.

Linf presets do not depend on the image size.  PSNR depends on the mean squared change, so
at H x W an L2 budget keeps the same PSNR when scaled by sqrt(H W / (h w)) for the
calibration size h x w (:func:`preset_eps` does this; for SSIM the scaling is a first
approximation).
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustbench_iqa.attacks.threat import ThreatModel, as_threat_model
from robustbench_iqa.errors import InputError

CALIBRATION_FILE = Path(__file__).with_name("attack-budgets.json")
"""The calibration script's output shipped with the package: the source of every preset."""

Key = tuple[str, str, str]
"""(attack, norm, floor)."""


@dataclass(frozen=True)
class PresetTable:
    """The presets of one calibration file: eps per (attack, norm, floor) at ``size`` (H, W)."""

    eps: Mapping[Key, float]
    capped: frozenset[Key]
    size: tuple[int, int]
    source: str

    @classmethod
    def from_calibration(cls, data: Mapping[str, Any], *, source: str = "calibration") -> PresetTable:
        """The table of a calibration (``{"settings": ..., "rows": [...]}``, as the script writes it):
        the smallest eps over the calibrated models; an entry is capped when it equals the search's
        upper end ``settings.hi[norm]``."""
        try:
            settings, rows = data["settings"], data["rows"]
            size = (int(settings["size"][0]), int(settings["size"][1]))
            hi = {str(k): float(v) for k, v in settings["hi"].items()}
            table: dict[Key, float] = {}
            for row in rows:
                key = (str(row["attack"]), str(row["norm"]), str(row["floor"]))
                table[key] = min(table.get(key, math.inf), float(row["eps"]))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InputError(f"{source} is not a budget calibration (settings.size, settings.hi, rows of "
                             f"attack/norm/floor/eps): {exc!r}") from None
        capped = frozenset(k for k, v in table.items() if k[1] in hi and v >= hi[k[1]] * (1 - 1e-9))
        return cls(table, capped, size, source)

    @classmethod
    def read(cls, path: str | Path) -> PresetTable:
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read the budget calibration {p}: {exc}") from None
        return cls.from_calibration(data, source=str(p))

    def attacks(self) -> list[str]:
        return sorted({k[0] for k in self.eps})

    def floors(self) -> list[str]:
        return sorted({k[2] for k in self.eps})

    def get(self, attack: str, norm: ThreatModel | str, floor: str = "psnr40", *,
            size: tuple[int, int] | None = None) -> float:
        """The calibrated eps of ``attack`` under ``norm`` and ``floor``; L2 rescaled to ``size`` (H, W)."""
        n = as_threat_model(norm)
        key = (attack.lower(), n.value, floor)
        if key not in self.eps:
            if key[0] not in self.attacks():
                raise InputError(
                    f"no budget preset for attack {attack!r}: it is not in the calibration {self.source} "
                    f"(calibrated: {', '.join(self.attacks())}); calibrate it with `python "
                    f"scripts/calibrate_attack_budgets.py --attacks {key[0]} --out DIR --merge-into "
                    f"{self.source}`, or give its eps explicitly")
            raise InputError(f"no budget preset for attack {attack!r}, norm {n.value!r}, floor {floor!r} "
                             f"(floors: {', '.join(self.floors())}; norms of {key[0]}: "
                             f"{', '.join(sorted({k[1] for k in self.eps if k[0] == key[0]}))})")
        eps = float(self.eps[key])
        if n is ThreatModel.L2 and size is not None:
            h, w = size
            if h < 1 or w < 1:
                raise InputError(f"size must be positive (H, W), got {size!r}")
            eps *= math.sqrt(h * w / (self.size[0] * self.size[1]))
        return eps


@functools.cache
def shipped_presets() -> PresetTable:
    """The presets of :data:`CALIBRATION_FILE` (read once)."""
    return PresetTable.read(CALIBRATION_FILE)


def preset_eps(attack: str, norm: ThreatModel | str, floor: str = "psnr40", *,
               size: tuple[int, int] | None = None) -> float:
    """The shipped calibrated eps of ``attack`` (see :meth:`PresetTable.get`); a missing one raises
    :class:`InputError` naming the command that calibrates it."""
    return shipped_presets().get(attack, norm, floor, size=size)


def capped() -> frozenset[Key]:
    """Shipped entries that stayed above the floor up to the search's upper end (see the module doc)."""
    return shipped_presets().capped
