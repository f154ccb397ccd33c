"""Weights are never random by accident: a published architecture without ``weights`` is an error
naming the choices; an explicit ``"random"`` builds, and says so next to every score."""

from __future__ import annotations

import pytest
import torch

from robustbench_iqa.cli import main
from robustbench_iqa.errors import InputError
from robustbench_iqa.models.registry import MODELS, create_model, model_info, register_model
from robustbench_iqa.models.weights import DefaultWeights, WeightsOrigin, WeightsRequiredError
from tests.toy_models import ToyNR

PUBLISHED = ("dbcnn", "hyperiqa", "koncept", "lpips", "dists", "dreamsim")


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_model_without_weights_is_refused_before_building(name: str) -> None:
    assert model_info(name).default_weights is DefaultWeights.NONE
    with pytest.raises(WeightsRequiredError) as err:
        create_model(name)
    text = str(err.value)
    for choice in ("weights='pretrained'", "weights=PATH", "weights='random'", "--weights"):
        assert choice in text
    assert isinstance(err.value, InputError) and "\n" not in text


def test_prefix_family_with_random_learned_weights_is_refused() -> None:
    with pytest.raises(WeightsRequiredError, match="'pyiqa:lpips' is a published architecture"):
        create_model("pyiqa:lpips")
    assert create_model("pyiqa:psnr").weights_origin is WeightsOrigin.NONE  # a formula has no weights


def test_explicit_random_builds_and_is_labelled() -> None:
    a = create_model("lpips", weights="random")
    assert a.weights_origin is WeightsOrigin.RANDOM and a.weights_origin.is_random
    assert create_model("default-nr").weights_origin is WeightsOrigin.LOCAL
    assert not WeightsOrigin.LOCAL.is_random and WeightsOrigin.PRETRAINED_BASE.is_random


def test_a_model_declares_real_local_default_weights() -> None:
    """A model whose factory reads real weights shipped with an installed package registers with the
    default ``default_weights="local"`` and builds without ``weights``; one registered ``"none"`` refuses."""
    name_local, name_none = "test-local-weights-model", "test-published-arch-model"
    try:
        register_model(name_local, mode="nr", lower_better=False, score_range=(0, 1))(
            lambda *, weights=None, device=None: ToyNR())
        register_model(name_none, mode="nr", lower_better=False, score_range=(0, 1), default_weights="none")(
            lambda *, weights=None, device=None: ToyNR())
        assert create_model(name_local).weights_origin is WeightsOrigin.LOCAL
        with pytest.raises(WeightsRequiredError):
            create_model(name_none)
        with pytest.raises(ValueError):
            register_model("x-bad", mode="nr", lower_better=False, score_range=(0, 1), default_weights="maybe")
    finally:
        for n in (name_local, name_none):
            MODELS._entries.pop(n, None)


def test_cli_refuses_in_one_line_and_shows_random_weights(capsys: pytest.CaptureFixture[str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    for i in range(2):
        Image.fromarray((torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(i)) * 255)
                        .to(torch.uint8).numpy()).save(tmp_path / f"{i}.png")
    args = ["predict", "--model", "lpips", "--image", str(tmp_path / "0.png"), "--ref", str(tmp_path / "1.png"),
            "--defense", "none", "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model 'lpips' is a published architecture") and err.count("\n") == 1
    assert main([*args, "--weights", "random"]) == 0
    out, err = capsys.readouterr()
    assert "RANDOM" in err
    header = out.splitlines()[0].split()
    assert "weights" in header and out.splitlines()[2].split()[header.index("weights")] == "random"
    assert main([*args, "--weights", "random", "--json"]) == 0
    import json

    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert row["weights"] == "random"


def test_attack_with_random_weights_is_labelled_and_recorded(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    import json

    from PIL import Image

    from robustbench_iqa.store import ResultsStore

    for i in range(2):
        Image.fromarray((torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(i)) * 255)
                        .to(torch.uint8).numpy()).save(tmp_path / f"{i}.png")
    run = tmp_path / "run"
    assert main(["attack", "--model", "lpips", "--weights", "random", "--image", str(tmp_path / "0.png"),
                 "--ref", str(tmp_path / "1.png"), "--steps", "2", "--out", str(run), "--json", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows[0]["weights"] == "random" and rows[0]["orientation"] == "distance" and "RANDOM" in err
    assert rows[-1]["summary"] and rows[-1]["weights"] == "random"
    with ResultsStore.open(run) as store:
        assert store.config["weights"] == "random"
