"""Options declared once by a defense or attack, reached from the CLI (--option, --attack-option)
and the verify config ([verify.defense.<name>]), checked with a did-you-mean."""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path

import pytest

from robustbench_iqa.attacks.registry import ATTACKS, attack_options, list_attacks
from robustbench_iqa.certify.defense import DEFENSES, list_defenses
from robustbench_iqa.certify.options import artifact_option, defense_options, split_options
from robustbench_iqa.cli import main
from robustbench_iqa.errors import InputError
from robustbench_iqa.options import Option, check_values, parse_assignment, parse_assignments
from robustbench_iqa.runner import VerifyConfig, run_verify
from robustbench_iqa.store import ResultsStore


# ------------------------------------------------------------------ parsing
@pytest.mark.parametrize(("text", "want"), [
    ("trim=0.2", ("trim", 0.2)), ("n_smooth=10", ("n_smooth", 10)), ("clip=false", ("clip", False)),
    ("certificate=radius", ("certificate", "radius")), ('certificate="radius"', ("certificate", "radius")),
    ("output-range=[0, 1]", ("output_range", [0, 1])), ("path=/tmp/x.safetensors", ("path", "/tmp/x.safetensors")),
    ("eps = 0.125", ("eps", 0.125)),
])
def test_key_value_is_read_as_toml_or_a_word(text: str, want: tuple[str, object]) -> None:
    assert parse_assignment(text) == want


@pytest.mark.parametrize("text", ["trim", "=0.2", "trim=", "1x=2"])
def test_a_malformed_assignment_is_refused(text: str) -> None:
    with pytest.raises(InputError, match="KEY=VALUE|empty"):
        parse_assignment(text)


def test_a_key_given_twice_is_refused() -> None:
    with pytest.raises(InputError, match="given twice"):
        parse_assignments(["trim=0.1", "trim=0.2"])


def test_values_are_checked_against_their_annotations() -> None:
    opts = {"trim": Option("trim", float, 0.1), "n": Option("n", int, 1), "tag": Option("tag", str | None, None),
            "anything": Option("anything", "SomeClass", None)}
    assert check_values(opts, {"trim": 1, "n": 3, "tag": None, "anything": object}, where="d") == \
        {"trim": 1.0, "n": 3, "tag": None, "anything": object}
    with pytest.raises(InputError, match=r"`d.n` must be an integer"):
        check_values(opts, {"n": 0.5}, where="d")
    with pytest.raises(InputError, match=r"unknown option `d.trm`; did you mean 'trim'\?"):
        check_values(opts, {"trm": 0.2}, where="d")


# -------------------------------------------------------- declared options
def _factory_keywords(fn: object) -> set[str]:
    params = inspect.signature(fn).parameters  # type: ignore[arg-type]
    return {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY} - {"sigma"}


@pytest.mark.parametrize("name", list_defenses())
def test_a_defense_declares_its_factory_keywords_and_certify_settings(name: str) -> None:
    """Against the factory's own signature and the built defense's settings dataclass."""
    from robustbench_iqa.certify import create_defense
    from robustbench_iqa.models import create_model

    opts = defense_options(name)
    build = {k for k, o in opts.items() if o.stage == "build"}
    assert build == _factory_keywords(DEFENSES.factory(name))
    certify = {k for k, o in opts.items() if o.stage == "certify"}
    if DEFENSES.metadata(name)["certified"]:
        d = create_defense(name, create_model("default-nr"), sigma=0.25 if DEFENSES.metadata(name)["noise"] else 0)
        assert certify == {f.name for f in dataclasses.fields(d.certify_settings)}
    key = artifact_option(name)
    assert (key is not None) is bool(DEFENSES.metadata(name)["trained"]) and (key is None or key in build)


@pytest.mark.parametrize("name", list_attacks())
def test_an_attack_declares_its_keywords(name: str) -> None:
    cls = ATTACKS.factory(name)
    params = inspect.signature(cls).parameters
    assert set(attack_options(name)) == {n for n, p in params.items()
                                         if p.kind is inspect.Parameter.KEYWORD_ONLY}


def test_split_options_sorts_factory_keywords_from_certify_settings() -> None:
    opts = split_options("cert-reg", {"trim": 0.2, "eps": 0.1, "certificate": "radius"}, where="x")
    assert opts.build == {"trim": 0.2, "certificate": "radius"} and opts.certify == {"eps": 0.1}
    fs = split_options("fs-iqa", {"tau": 0.01, "noise_space": "feature"}, where="x")
    assert fs.certify == {"tau": 0.01} and fs.build["noise_space"].value == "feature"
    with pytest.raises(InputError, match="must be NoiseSpace or str"):
        split_options("fs-iqa", {"noise_space": 3}, where="x")
    with pytest.raises(InputError, match="did you mean 'trim'"):
        split_options("cert-reg", {"trimm": 0.2}, where="x")


# ---------------------------------------------------------------------- CLI
CERT = ["certify", "--model", "default-nr", "--dataset", "default", "--limit", "1", "--n", "300",
        "--alpha", "0.9", "--json", "--no-progress"]


def _rows(out: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_option_reaches_the_defense_as_its_own_flag_does(capsys: pytest.CaptureFixture[str]) -> None:
    """--option trim=0.3 gives exactly what the long-standing --trim 0.3 flag gives, and differs from trim 0."""
    out = {}
    for name, extra in {"option": ["--option", "trim=0.3"], "flag": ["--trim", "0.3"],
                        "zero": ["--option", "trim=0.0"], "eps": ["--option", "eps=0.05"]}.items():
        assert main([*CERT, "--defense", "cert-reg", *extra]) == 0, capsys.readouterr().err
        out[name] = _rows(capsys.readouterr().out)[0]
    assert out["option"] == {**out["flag"], "seconds": out["option"]["seconds"]}
    assert out["zero"]["score"] != out["option"]["score"]
    assert out["eps"]["eps_x"] == 0.05


@pytest.mark.parametrize(("argv", "msg"), [
    ([*CERT, "--defense", "cert-reg", "--option", "trimm=0.2"], "did you mean 'trim'"),
    ([*CERT, "--defense", "cert-reg", "--option", "trim=high"], "cert-reg.trim` must be a number"),
    ([*CERT, "--defense", "cert-reg", "--option", "trim=0.2", "--trim", "0.2"], "both given"),
    ([*CERT, "--defense", "ms", "--option", "tau=0.1"], "did you mean 'eps'|options: batch_size"),
    (["predict", "--model", "default-nr", "--dataset", "default", "--limit", "1", "--defense", "ms",
      "--option", "eps=0.1"], "certify setting"),
    (["predict", "--model", "default-nr", "--dataset", "default", "--limit", "1", "--defense", "none",
      "--option", "eps=0.1"], "--defense none"),
    (["attack", "--model", "default-nr", "--dataset", "default", "--limit", "1", "--attack", "madc",
      "--attack-option", "hodl=mse"], "did you mean 'hold'"),
    (["attack", "--model", "default-nr", "--dataset", "default", "--limit", "1", "--attack-option", "eps=0.1"],
     "use --eps"),
    ([*CERT, "--defense", "fs-iqa", "--n", "10", "--alpha", "0.999"], "need n >= 44"),
    ([*CERT, "--defense", "ms", "--n", "25", "--alpha", "0.999", "--option", "eps=0.2"], "need n >= 32"),
])
def test_option_errors_are_one_line_and_exit_2(argv: list[str], msg: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert any(m in err for m in msg.split("|")), err


def test_attack_option_reaches_the_attack(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["attack", "--model", "default-nr", "--dataset", "default", "--limit", "1", "--attack", "madc",
            "--norm", "l2", "--eps", "0.5", "--steps", "2", "--json", "--no-progress"]
    rows = {}
    for hold in ("mse", "ssim"):
        assert main([*base, "--attack-option", f"hold={hold}"]) == 0, capsys.readouterr().err
        rows[hold] = _rows(capsys.readouterr().out)[0]
    assert rows["mse"]["adv_score"] != rows["ssim"]["adv_score"]


# ------------------------------------------------------------------- verify
def test_a_defense_table_is_checked_with_a_did_you_mean() -> None:
    with pytest.raises(InputError, match=r"verify.defense.cert-reg.trimm`; did you mean 'trim'"):
        VerifyConfig.from_mapping({"defenses": ["cert-reg"], "defense": {"cert-reg": {"trimm": 0.2}}})
    with pytest.raises(InputError, match=r"'cert-rg' is no registered defense; did you mean 'cert-reg'"):
        VerifyConfig.from_mapping({"defense": {"cert-rg": {"trim": 0.2}}})
    with pytest.raises(InputError, match="must be a number"):
        VerifyConfig.from_mapping({"defense": {"cert-reg": {"trim": "x"}}})


def test_a_misspelled_defense_option_in_the_config_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "pyproject.toml"
    cfg.write_text('[tool.robustbench_iqa.verify]\ndefenses = ["cert-reg"]\n'
                   '[tool.robustbench_iqa.verify.defense.cert-reg]\ntrimm = 0.2\n')
    assert main(["verify", "--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "did you mean 'trim'" in err and "Traceback" not in err


def test_variants_of_one_defense_run_side_by_side_through_verify(tmp_path: Path) -> None:
    """RS-Reg with its mean bounds and with the published radius, gated in one run."""
    table = {"models": ["default-nr"], "defenses": ["rs-reg", "rs-reg-radius", "cert-reg"], "limit": 1,
             "n": 200, "alpha": 0.99, "studies": ["certify"], "certify": {"max_abstain_rate": 1.0},
             "defense": {"rs-reg-radius": {"defense": "rs-reg", "certificate": "radius"},
                         "cert-reg": {"trim": 0.25, "eps": 0.05}}}
    cfg = VerifyConfig.from_mapping(table)
    assert cfg.registered("rs-reg-radius") == "rs-reg" and cfg.defense_table("cert-reg").certify == {"eps": 0.05}
    outcome = run_verify(cfg, tmp_path / "run", report=False, progress=False)
    with ResultsStore.open(tmp_path / "run") as store:
        rows = store.frame("guarantee")
        assert store.config["defense"]["rs-reg-radius"] == {"defense": "rs-reg", "certificate": "radius"}
    kinds = rows.groupby("defense")["guarantee"].agg(set).to_dict()
    assert kinds == {"rs-reg": {"mean_bounds"}, "rs-reg-radius": {"probabilistic_radius"},
                     "cert-reg": {"mean_bounds"}}
    assert set(rows[rows["defense"] == "cert-reg"]["eps_x"].dropna()) == {0.05}
    assert {c.defense for c in outcome.checks if c.defense} >= {"rs-reg", "rs-reg-radius", "cert-reg"}
