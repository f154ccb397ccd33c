"""The FS-IQA Tables 1-2 recipe end to end, on small synthetic copies of KonIQ-10k and KADID-10k in
their official layouts (official file names, folders, CSV columns and the official sets file).

The recipe: ``train`` the FS-IQA heads on the train part, then ``verify`` with a config naming the
dataset, ``split = "test"``, the working size, the defenses, the sigmas and the checkpoints.  The
embedded models stand in for the published ones (whose weights are not here); everything else is
the recipe as documented.  The reference: the fixture's own list of official test images, and a
brute-force seeded split by reference for KADID-10k.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from robustbench_iqa.cli import main
from robustbench_iqa.store import ResultsStore
from tests.official_layouts import make_kadid, make_koniq


def _toml(path: Path, table: dict[str, object]) -> Path:
    def value(v: object) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)

    lines = ["[tool.robustbench_iqa.verify]"] + [f"{k} = {value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _stored_images(run: Path, table: str = "correlation") -> set[str]:
    with ResultsStore.open(run) as store:
        df = store.frame(table)
        config = store.config
    return {str(i).split("#", 1)[0] for i in df["image"]}, df, config  # type: ignore[return-value]


def _recipe(tmp_path: Path, *, model: str, dataset: str, root: Path, capsys: pytest.CaptureFixture[str]
            ) -> tuple[set[str], object, dict, str]:
    ckpt = tmp_path / "checkpoints"
    assert main(["train", "--model", model, "--dataset", dataset, "--root", str(root), "--size", "24x32",
                 "--sigma", "0.25", "--epochs", "3", "--n-eval", "16", "--out", str(ckpt), "--no-progress"]) == 0
    trained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cfg = _toml(tmp_path / "pyproject.toml", {
        "models": [model], "dataset": dataset, "root": str(root), "split": "test", "size": "24x32",
        "defenses": ["fs-iqa"], "sigma": [0.25], "n": 200, "alpha": 0.999, "limit": 10_000, "batch_size": 8,
        "checkpoints": {f"{model}@0.25": trained["checkpoint"]}, "studies": ["certify"],
    })
    run = tmp_path / "run"
    rc = main(["verify", "--config", str(cfg), "--out", str(run), "--no-progress", "--no-report"])
    out = capsys.readouterr().out
    assert rc in (0, 1), out  # the gate's verdict on random-ish heads is not the point here
    images, df, config = _stored_images(run)
    return images, df, config, out + json.dumps(trained)


def test_table1_recipe_on_the_official_koniq_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "koniq10k"
    k = make_koniq(root, n=30)
    images, df, config, out = _recipe(tmp_path, model="default-nr", dataset="koniq10k", root=root, capsys=capsys)
    assert images == set(k.names_of("test"))  # exactly the official test set: none of the training images
    assert config["data"]["split"] == {"split": "test", "kind": "official", "set": "test",
                                       "n": len(k.names_of("test"))}
    assert config["data"]["score_column"] == "MOS" and config["data"]["score_range"] == [1.0, 5.0]
    assert config["scores"]["models"]["default-nr"] == {"weights": "local", "orientation": "quality",
                                                        "score_range": [0.0, 1.0]}
    assert set(df["orientation"]) == {"quality"}
    assert "official set 'test'" in out and f'"n_test": {len(k.names_of("test"))}' in out


def test_table2_recipe_on_the_official_kadid_layout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref_of = make_kadid(tmp_path, n_refs=10)
    images, df, config, out = _recipe(tmp_path, model="default-fr", dataset="kadid10k", root=tmp_path,
                                      capsys=capsys)
    refs = sorted({Path(r).stem for r in ref_of.values()})
    perm = np.random.default_rng(0).permutation(len(refs))
    test_refs = {refs[j] for j in perm[8:]}  # brute force: the seeded split by reference, seed 0
    assert images == {d for d, r in ref_of.items() if Path(r).stem in test_refs}
    assert config["data"]["split"]["kind"] == "seeded" and config["data"]["split"]["by"] == "reference"
    rows = df.set_index("defense")
    # one convention, stated on every row: the FR model's own score is a distance, FS-IQA's a quality
    assert set(rows.loc["none", "orientation"]) == {"distance"}
    assert set(rows.loc["fs-iqa", "orientation"]) == {"quality"}
    assert config["scores"]["defenses"]["default-fr:fs-iqa@0.25"]["orientation"] == "quality"
    assert "seeded 80%/20% split by reference, seed 0" in out


def test_published_model_in_the_recipe_needs_its_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "koniq10k"
    make_koniq(root, n=6)
    cfg = _toml(tmp_path / "pyproject.toml", {"models": ["koncept"], "dataset": "koniq10k", "root": str(root)})
    assert main(["verify", "--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "weights = { \"koncept\" = \"pretrained\" }" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_cli_certify_on_the_official_test_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "koniq10k"
    k = make_koniq(root, n=20)
    assert main(["predict", "--model", "default-nr", "--dataset", "koniq10k", "--root", str(root), "--size", "24x32",
                 "--defense", "none", "--json", "--no-progress"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == k.names_of("test")
    assert {r["orientation"] for r in rows} == {"quality"} and {r["weights"] for r in rows} == {"local"}
    assert rows[0]["target"] == pytest.approx(k.mos[k.names.index(rows[0]["image"])])


def test_model_options_are_parsed_and_checked() -> None:
    from robustbench_iqa.errors import InputError
    from robustbench_iqa.runner.config import VerifyConfig, options_of
    from robustbench_iqa.runner.workspace import Workspace, check_checkpoint_keys

    cfg = VerifyConfig(models=("hyperiqa", "default-nr"), model_options={
        "hyperiqa.crops": "random", "hyperiqa.num_crops": "4", "hyperiqa.input_size": "384x512"}).validate()
    check_checkpoint_keys(cfg)
    assert options_of(cfg, "hyperiqa") == {"crops": "random", "num_crops": 4, "input_size": "384x512"}
    assert options_of(cfg, "default-nr") == {}
    for options, message in (({"dbcnn.input_size": "384x512"}, "names no configured model"),
                             ({"crops": "random"}, "must look like")):
        with pytest.raises(InputError, match=message):
            check_checkpoint_keys(VerifyConfig(models=("hyperiqa",), model_options=options))
    with pytest.raises(InputError, match="takes no argument 'crops'"):
        Workspace(VerifyConfig(models=("default-nr",), model_options={"default-nr.crops": "random"})).model("default-nr")


@pytest.mark.slow
def test_model_protocol_is_set_from_the_config_and_checked() -> None:
    from robustbench_iqa.errors import InputError
    from robustbench_iqa.runner.config import VerifyConfig
    from robustbench_iqa.runner.workspace import Workspace, check_checkpoint_keys

    cfg = VerifyConfig(models=("hyperiqa",), weights={"hyperiqa": "random"},
                       model_options={"hyperiqa.crops": "random", "hyperiqa.num_crops": "4",
                                      "hyperiqa.input_size": "384x512"}).validate()
    check_checkpoint_keys(cfg)
    assert Workspace(cfg).model("hyperiqa").protocol == {"crops": "random", "num_crops": 4,
                                                         "input_size": "384x512", "crop_seed": 0}
    for options, message in (({"dbcnn.input_size": "384x512"}, "names no configured model"),
                             ({"crops": "random"}, "must look like")):
        with pytest.raises(InputError, match=message):
            check_checkpoint_keys(VerifyConfig(models=("hyperiqa",), model_options=options))
    with pytest.raises(InputError, match="did you mean 'crops'"):
        Workspace(VerifyConfig(models=("hyperiqa",), weights={"hyperiqa": "random"},
                               model_options={"hyperiqa.crop": "random"})).model("hyperiqa")


def test_dataset_options_choose_the_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from robustbench_iqa.runner.config import VerifyConfig
    from robustbench_iqa.runner.workspace import dataset_settings, open_split

    root = tmp_path / "koniq10k"
    k = make_koniq(root, n=12)
    cfg = VerifyConfig(dataset="koniq10k", root=str(root), dataset_options={"score_column": "MOS_zscore"}).validate()
    rec = dataset_settings(cfg)
    assert rec["score_column"] == "MOS_zscore" and rec["score_range"] == [0.0, 100.0]
    want = {n: z for n, z in zip(k.names, k.zscore)}
    assert {s.name: s.score for s in open_split(cfg)} == pytest.approx({n: want[n] for n in k.names_of("test")})
    assert main(["predict", "--model", "default-nr", "--dataset", "koniq10k", "--root", str(root), "--size",
                 "24x32", "--dataset-option", "score_column=MOS_zscore", "--defense", "none", "--json",
                 "--no-progress"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["image"]: r["target"] for r in rows} == pytest.approx({n: want[n] for n in k.names_of("test")})
    assert main(["predict", "--model", "default-nr", "--dataset", "koniq10k", "--root", str(root),
                 "--dataset-option", "score_colum=MOS", "--defense", "none", "--no-progress"]) == 2
    assert "did you mean 'score_column'" in capsys.readouterr().err
