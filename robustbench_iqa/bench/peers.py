"""Peers measured in the same run: the official forward pass of a model, and torchattacks' BIM.

* ``peer-forward``: the model's own published implementation on the same input, where one is
  installed and reads its weights offline (:data:`OFFICIAL`): the ST-LPIPS networks through
  ``stlpips_pytorch.stlpips.LPIPS``.  Its row's ``suite_over_peer`` is the suite's forward time
  over the official one (1.0: as fast).
* ``attack-ifgsm`` / ``peer-bim``: the suite's I-FGSM (:class:`~robustbench_iqa.attacks.gradient.IFGSM`,
  ``steps`` steps of eps / steps, no random start) and ``torchattacks.BIM`` with the same eps,
  step size and steps, on the same model and input (BIM through
  :class:`~robustbench_iqa.attacks.torchattacks_adapter.IQAClassifier`).  Both cost ``steps``
  forward/backward passes; the suite adds one forward pass that scores the last iterate (its
  best-iterate selection), so the ideal ratio is about ``1 + 1 / (3 steps)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from robustbench_iqa.bench.subjects import Subject

ATTACK_EPS = 4 / 255
ATTACK_STEPS = 10


def _stlpips(net: str) -> Callable[[Subject], Callable[[], Any]]:
    def build(subject: Subject) -> Callable[[], Any]:
        from robustbench_iqa.models.stlpips import official_lpips

        official = official_lpips(net).to(subject.device)

        @torch.no_grad()
        def forward() -> torch.Tensor:
            return official(subject.x, subject.ref, normalize=True)

        return forward

    return build


OFFICIAL: dict[str, Callable[[Subject], Callable[[], Any]]] = {
    "st-lpips-alex": _stlpips("alex"),
    "st-lpips-vgg": _stlpips("vgg"),
}
"""Model name -> builder of the official forward pass on a subject's input."""


def official_forward(subject: Subject) -> Callable[[], Any] | None:
    """The official forward pass of the subject's model on its input, or ``None`` where none is known."""
    build = OFFICIAL.get(subject.spec.model)
    return None if build is None else build(subject)


def attack_pair(subject: Subject, *, steps: int = ATTACK_STEPS,
                eps: float = ATTACK_EPS) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """``(suite I-FGSM, torchattacks BIM)`` on the subject's model and input, same settings."""
    import torchattacks

    from robustbench_iqa.attacks.gradient import IFGSM
    from robustbench_iqa.attacks.objective import Objective
    from robustbench_iqa.attacks.torchattacks_adapter import IQAClassifier

    model, x, ref = subject.model, subject.x, subject.ref
    attack = IFGSM(eps=eps, steps=steps)
    objective = Objective.from_model(model)
    clf = IQAClassifier(model, ref=ref)
    bim = torchattacks.BIM(clf, eps=eps, alpha=eps / steps, steps=steps)
    labels = clf.labels(x)

    def suite() -> Any:
        return attack.run(objective, x, ref)

    def peer() -> Any:
        return bim(x, labels)

    return suite, peer
