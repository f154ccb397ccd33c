"""The benchmark's peers compute what the suite computes, so their time ratio means something."""

from __future__ import annotations

import pytest
import torch

from robustbench_iqa.bench.peers import attack_pair, official_forward
from robustbench_iqa.bench.subjects import SubjectSpec, build_subject

pytest.importorskip("stlpips_pytorch")


def test_official_forward_is_the_same_distance() -> None:
    subject = build_subject(SubjectSpec(model="st-lpips-alex", size=(32, 48)))
    official = official_forward(subject)
    assert official is not None
    with torch.no_grad():
        ours = subject.model(subject.x, subject.ref)
    torch.testing.assert_close(official().flatten(), ours.flatten(), rtol=1e-5, atol=1e-8)


def test_no_official_forward_for_a_model_without_one() -> None:
    assert official_forward(build_subject(SubjectSpec(model="default-nr", size=(32, 48)))) is None


@pytest.mark.parametrize("model", ["default-nr", "default-fr"])
def test_ifgsm_and_bim_take_the_same_steps(model: str) -> None:
    # Same eps, step size and steps from x: the same iterates.  BIM returns the last one, I-FGSM its
    # best; on these inputs every step raises quality, so the last is the best.
    subject = build_subject(SubjectSpec(model=model, size=(32, 48)))
    suite, peer = attack_pair(subject, steps=3)
    ours, theirs = suite(), peer()
    assert not subject.model.training
    assert (ours.adv - subject.x).abs().max() <= 4 / 255 + 1e-6
    torch.testing.assert_close(ours.adv, theirs, rtol=0, atol=1e-6)
