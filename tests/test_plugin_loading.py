"""A user's module on every command: ``--plugin MODULE``, ``$ROBUSTBENCH_IQA_PLUGINS`` and ``plugins = [...]``.

A plugin registered from outside the package must work on the commands, and a plugin
that misbehaves in any way (sys.exit(0) included) must give one ``error:`` line and
exit code 2 -- never exit 0 without the command's work, never a traceback.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from robustbench_iqa.cli import main
from robustbench_iqa.errors import InputError
from robustbench_iqa.models.registry import MODELS
from robustbench_iqa.plugins import ENV_VAR, load_plugins, plugin_names

GOOD = '''
from robustbench_iqa.models.registry import create_model, register_model

@register_model("{model}", mode="nr", lower_better=False, score_range=(0.0, 1.0), description="a user's model")
def _build(*, weights=None, device="cpu"):
    return create_model("default-nr", weights=weights, device=device)
'''

BAD = {
    "exit0": "import sys\nsys.exit(0)\n",
    "exit-none": "raise SystemExit\n",
    "exit-text": "import sys\nsys.exit('bye')\n",
    "runtime": "raise RuntimeError('plugin broke\\nacross lines')\n",
    "valueerror": "raise ValueError('nope')\n",
    "syntax": "def broken(:\n    pass\n",
    "importerror": "import a_module_that_does_not_exist_xyz\n",
    "keyerror": "{}['k']\n",
    "base": "class Odd(BaseException):\n    pass\nraise Odd('strange')\n",
}


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    import robustbench_iqa.plugins as plugins

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setattr(plugins, "_LOADED", [])  # this test's modules only (they vanish with tmp_path)
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("rbplug_"):
            del sys.modules[name]


@pytest.fixture
def user_model(plugin_dir: Path) -> Iterator[tuple[str, str]]:
    """A plugin module (unique name) registering a model (unique name): (module, model)."""
    tag = uuid.uuid4().hex[:8]
    module, model = f"rbplug_good_{tag}", f"my-model-{tag}"
    (plugin_dir / f"{module}.py").write_text(GOOD.format(model=model))
    yield module, model
    MODELS._entries.pop(model, None)


def _bad(plugin_dir: Path, kind: str) -> str:
    module = f"rbplug_{kind.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
    (plugin_dir / f"{module}.py").write_text(BAD[kind])
    return module


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("img") / "x.png"
    Image.fromarray((np.random.default_rng(1).random((24, 24, 3)) * 255).astype(np.uint8)).save(p)
    return p


def _one_error(capsys: pytest.CaptureFixture[str], rc: int, *names: str) -> str:
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, (out, err)
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("error: "), err
    for n in names:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# -------------------------------------------------------------------------- a user's model works
def test_certify_runs_a_model_registered_by_a_plugin(user_model, image, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    module, model = user_model
    common = ["certify", "--image", str(image), "--n", "64", "--alpha", "0.9", "--seed", "3", "--no-progress",
              "--json"]
    assert main([*common, "--model", "default-nr", "--out", str(tmp_path / "ref")]) == 0
    ref = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main([*common, "--model", model]) == 2  # unknown without the plugin
    _one_error(capsys, 2, f"unknown model '{model}'")
    assert main([*common, "--plugin", module, "--model", model, "--out", str(tmp_path / "run")]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the plugin's model is default-nr under another name: the same certificate, bit for bit
    for key in ("score", "lower", "upper", "eps_x", "abstained"):
        assert row[key] == ref[key], key


def test_environment_variable_and_every_command(user_model, image, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    module, model = user_model
    monkeypatch.setenv(ENV_VAR, f" {module} ,")
    assert main(["list", "models"]) == 0
    assert model in capsys.readouterr().out
    assert main(["predict", "--model", model, "--defense", "none", "--image", str(image), "--json",
                 "--no-progress"]) == 0
    score = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["score"]
    monkeypatch.delenv(ENV_VAR)
    assert main(["predict", "--model", "default-nr", "--defense", "none", "--image", str(image), "--json",
                 "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["score"] == score


def test_every_command_takes_plugin_flag() -> None:
    import argparse

    from robustbench_iqa.cli import _commands, build_parser

    for name in _commands():
        sub = next(a for a in build_parser(name)._actions if isinstance(a, argparse._SubParsersAction))
        action = sub.choices[name]._option_string_actions.get("--plugin")
        assert action is not None and isinstance(action, argparse._AppendAction), name
        assert action.dest == "plugins", name


def test_plugins_before_and_after_a_nested_subcommand() -> None:
    from robustbench_iqa.cli import _plugins, build_parser

    p = build_parser("weights")
    args = p.parse_args(["weights", "--plugin", "a", "check", "--model", "m", "--weights", "w", "--plugin", "b"])
    assert _plugins(args) == ["a", "b"]
    args = p.parse_args(["weights", "--plugin", "a", "check", "--model", "m", "--weights", "w"])
    assert _plugins(args) == ["a"]


# ---------------------------------------------------------------- a plugin that misbehaves
COMMANDS = {
    "certify": lambda img: ["certify", "--image", str(img), "--n", "64", "--no-progress"],
    "predict": lambda img: ["predict", "--image", str(img), "--no-progress"],
    "attack": lambda img: ["attack", "--image", str(img), "--steps", "1", "--no-progress"],
    "train": lambda img: ["train", "--epochs", "1"],
    "bench": lambda img: ["bench"],
    "verify": lambda img: ["verify", "--no-progress"],
    "report": lambda img: ["report", "nowhere"],
    "list": lambda img: ["list"],
    "weights": lambda img: ["weights", "check", "--model", "default-nr", "--weights", "pretrained"],
}


@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_failing_plugin_is_one_error_line(plugin_dir, image, tmp_path, monkeypatch, capsys,  # type: ignore[no-untyped-def]
                                            kind: str, how: str) -> None:
    for command, argv in COMMANDS.items():
        module = _bad(plugin_dir, kind)
        args = [*argv(image), "--out", str(tmp_path / command)] if command in ("certify", "verify") else argv(image)
        if how == "flag":
            args = [*args, "--plugin", module]
            monkeypatch.delenv(ENV_VAR, raising=False)
        else:
            monkeypatch.setenv(ENV_VAR, module)
        line = _one_error(capsys, main(args), module)
        assert ("--plugin" if how == "flag" else ENV_VAR) in line, line
        if kind.startswith("exit"):
            assert "sys.exit" in line
        assert not (tmp_path / command).exists() or not any((tmp_path / command).iterdir())


@pytest.mark.parametrize("value, names", [
    ("3", ["plugins", "3"]),
    ('["ok", 3]', ["plugins", "3"]),
    ('[""]', ["plugins", "''"]),
    ('["has space"]', ["plugins", "has space"]),
    ('{a = 1}', ["plugins"]),
])
def test_bad_plugins_key(tmp_path, capsys, value: str, names: list[str]) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text(f"[tool.robustbench_iqa.verify]\nplugins = {value}\n")
    _one_error(capsys, main(["verify", "--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]),
               *names)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["exit0", "syntax", "runtime", "importerror"])
def test_bad_plugin_in_config(plugin_dir, tmp_path, capsys, kind: str) -> None:  # type: ignore[no-untyped-def]
    module = _bad(plugin_dir, kind)
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text(f'[tool.robustbench_iqa.verify]\nplugins = ["{module}"]\n')
    line = _one_error(capsys, main(["verify", "--config", str(cfg), "--out", str(tmp_path / "run"),
                                    "--no-progress"]), "verify.plugins", module)
    assert "exit 0" not in line


def test_sys_exit_while_a_command_runs_is_never_exit_0(user_model, image, capsys) -> None:  # type: ignore[no-untyped-def]
    """A plugin's model that calls sys.exit(0) in its forward pass: exit 2, not a silent success."""
    from robustbench_iqa.models.registry import create_model

    def quitter(**kw):  # type: ignore[no-untyped-def]
        m = create_model("default-nr", **kw)
        m.forward = lambda *a, **k: sys.exit(0)  # type: ignore[method-assign]
        return m

    name = f"quitter-{uuid.uuid4().hex[:6]}"
    with MODELS.override(name, quitter, mode="nr", lower_better=False, score_range=(0.0, 1.0)):
        rc = main(["predict", "--model", name, "--defense", "none", "--image", str(image), "--no-progress"])
    line = _one_error(capsys, rc, "sys.exit(0)")
    assert "no result" in line


# ---------------------------------------------------------------------------- the loader itself
def test_plugin_names() -> None:
    assert plugin_names("a.b", where="w") == ("a.b",)
    assert plugin_names(["a", " b ", "a"], where="w") == ("a", "b")
    assert plugin_names(None, where="w") == ()
    for bad in (3, [3], ["a b"], ["1abc"], ["a..b"], {"a": 1}, [None]):
        with pytest.raises(InputError, match="^w must be a list of module names"):
            plugin_names(bad, where="w")


def test_load_plugins_order_and_env(plugin_dir, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    log = plugin_dir / "log.txt"
    for n in ("rbplug_one", "rbplug_two"):
        (plugin_dir / f"{n}.py").write_text(f"open({str(log)!r}, 'a').write('{n}\\n')\n")
    monkeypatch.setenv(ENV_VAR, "rbplug_two,rbplug_one")
    assert load_plugins(["rbplug_one"]) == ("rbplug_one", "rbplug_two")
    assert log.read_text().split() == ["rbplug_one", "rbplug_two"]  # each imported once


def test_ray_workers_import_the_plugins_of_the_driver(user_model) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("ray")
    from robustbench_iqa.runner.config import VerifyConfig
    from robustbench_iqa.runner.ray_executor import RayExecutor

    module, _ = user_model
    load_plugins([module])
    actor, init = RayExecutor(VerifyConfig())._actor(1)
    assert module in init[2]


def test_ray_image_workers_import_the_plugins_of_the_driver(user_model) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("ray")
    import argparse

    from robustbench_iqa.runner.ray_items import ItemWorker, RayItems

    module, model = user_model
    load_plugins([module])
    args = argparse.Namespace(device="cpu", model=model, func=None)
    _, init = RayItems(lambda ns: ns, lambda st, it: it, args)._actor(1)
    assert module in init[2]["_plugins"]
    worker = ItemWorker(*init)  # in-process: the state is built from the plain arguments
    assert worker.state.model == model and not hasattr(worker.state, "_plugins")
