"""Building a defense from command-line arguments (the same rules as the verify config)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from robustbench_iqa.cli import _common as c
from robustbench_iqa.errors import InputError

if TYPE_CHECKING:
    from robustbench_iqa.certify.defense import CertifiedDefense
    from robustbench_iqa.certify.options import DefenseOptions
    from robustbench_iqa.models.base import IQAModel


DEFAULT_SIGMA = 0.25
SPECTRAL_METHODS = ("lanczos", "power", "exact")
"""The values of :class:`certify.spectral.SpectralMethod` (named here so that --help imports no torch)."""

CERTIFY_SETTINGS = ("tau", "eps", "method", "rtol", "max_iter", "delta", "local_radius", "lipschitz")
"""Flags passed to ``defense.certify`` (refused by a defense whose settings do not declare them)."""
FACTORY_OPTIONS = ("certificate", "p_valid", "eps_y", "n_smooth", "trim")
"""Flags passed to the defense's factory (refused, by the registry, by one that does not take them)."""
SIGMA_HELP = ("noise standard deviation (default: 0.25; defenses that draw no noise, e.g. jpeg, take none: "
              "their sigma is 0)")


def add_defense_args(p: argparse.ArgumentParser, *, certify: bool) -> None:
    g = p.add_argument_group("defense")
    g.add_argument("--defense", default="fs-iqa",
                   help="fs-iqa (default), ms, dms, dms-iqa, rs-reg, cert-reg"
                        + ("" if certify else "; empirical: jpeg, bit-depth, median, gaussian-blur, resize, "
                                              "random-resize, purifier; or none")
                        + " (`robustbench-iqa list defenses`)")
    g.add_argument("--sigma", type=c.positive_float, default=None, help=SIGMA_HELP)
    g.add_argument("--n", type=c.sample_count, default=2000, help="noise draws per image (default: 2000)")
    g.add_argument("--checkpoint", default=None,
                   help="trained artifact of the defense: FS-IQA heads, or the denoiser of dms/dms-iqa "
                        "(default: the shipped one)")
    g.add_argument("--batch-size", type=c.positive_int, default=4, help="images per batch (default: 4)")
    g.add_argument("--option", action="append", default=None, metavar="KEY=VALUE",
                   help="an option the defense declares (repeatable; `robustbench-iqa list defenses "
                        "--options`): a keyword of its factory (cert-reg trim=0.2, rs-reg certificate=radius)"
                        + (" or a setting of its certify (fs-iqa tau=0.01, ms eps=0.1)" if certify else "")
                        + "; VALUE is read as TOML (0.1, true, [0, 1]) or else as a word")
    p.set_defaults(certifies=certify)
    if certify:
        g.add_argument("--alpha", type=c.probability, default=0.999, help="confidence level (default: 0.999)")
        g.add_argument("--tau", type=c.nonneg_float, default=None,
                       help="FS-IQA: abstain when ||J_B(x)||_2 < tau (default: 0.001)")
        g.add_argument("--eps", type=c.positive_float, default=None,
                       help="input-space defenses: L2 radius to certify (default: sigma / 2)")
        g.add_argument("--method", default=None, choices=SPECTRAL_METHODS,
                       help="FS-IQA spectral-norm method (default: lanczos)")
        g.add_argument("--rtol", type=c.positive_float, default=None, help="relative tolerance of the spectral norm")
        g.add_argument("--max-iter", type=c.positive_int, default=None, help="most Jacobian products per image")
        g.add_argument("--delta", type=c.probability, default=None,
                       help="FS-IQA: certify from an upper bound of ||J_B(x)||_2 that fails with probability delta "
                            "(confidence alpha - delta; default: the first-order Lanczos estimate)")
        g.add_argument("--local-radius", action="store_true", default=None,
                       help="FS-IQA: also compute the certified local radius eps_x_local (embedded models)")
        g.add_argument("--no-lipschitz", dest="lipschitz", action="store_false", default=None,
                       help="FS-IQA: skip the certified global radius eps_x_lipschitz")
    r = p.add_argument_group("RS-Reg / Cert-Reg certificate")
    r.add_argument("--certificate", default=None,
                   help="rs-reg: mean-bounds (default), radius or mean-radius; cert-reg: trimmed-mean-bounds "
                        "(default) or radius")
    r.add_argument("--p-valid", type=c.probability, default=None,
                   help="the published radius: probability P that the output stays within eps_y")
    r.add_argument("--eps-y", type=c.positive_float, default=None, help="the published radius: output tolerance")
    r.add_argument("--n-smooth", type=c.positive_int, default=None,
                   help="the published radius: noisy outputs averaged (rs-reg mean-radius, cert-reg)")
    r.add_argument("--trim", type=c.nonneg_float, default=None,
                   help="cert-reg: fraction trimmed at each end, in [0, 0.5) (default 0.1)")


def resolve_sigma(args: argparse.Namespace) -> float:
    """The sigma of ``--defense``: ``--sigma`` (default 0.25) for a defense that draws Gaussian noise;
    0 for one that draws none (registered with ``noise=False``, e.g. the empirical transforms),
    which refuses ``--sigma``; 0 for ``--defense none``.  Names the registry does not know keep
    ``--sigma`` (``build_defense`` reports them)."""
    from robustbench_iqa.certify.defense import DEFENSES
    from robustbench_iqa.validation import check_sigma

    if args.defense == "none":
        return 0.0
    noise = DEFENSES.metadata(args.defense).get("noise", True) if args.defense in DEFENSES else True
    if not noise:
        if args.sigma is not None and args.sigma != 0:
            raise InputError(f"--sigma does not apply to defense {args.defense!r}: it draws no noise (its sigma is 0)")
        return 0.0
    return check_sigma(DEFAULT_SIGMA if args.sigma is None else args.sigma, name="--sigma")


def require_certified(args: argparse.Namespace) -> None:
    """Refuse an empirical defense (one without a certificate) where a certificate is asked for."""
    from robustbench_iqa.certify.defense import DEFENSES

    if args.defense in DEFENSES and not DEFENSES.metadata(args.defense).get("certified", True):
        raise InputError(f"defense {args.defense!r} is empirical: it has no certificate; score it with "
                         f"`robustbench-iqa predict --defense {args.defense}` or attack it with "
                         f"`robustbench-iqa attack --defense {args.defense}`")


def defense_options(args: argparse.Namespace) -> DefenseOptions:
    """The ``--option KEY=VALUE`` values of ``--defense``, checked against the options it declares
    (did-you-mean on an unknown key), split into factory keywords and ``certify`` settings."""
    from robustbench_iqa.certify.options import DefenseOptions, split_options
    from robustbench_iqa.options import parse_assignments

    given = parse_assignments(getattr(args, "option", None), flag="--option")
    if not given or args.defense == "none":
        if given:
            raise InputError("--option sets options of a defense; --defense none has none")
        return DefenseOptions()
    for k in (*CERTIFY_SETTINGS, *FACTORY_OPTIONS):
        if getattr(args, k, None) is not None and k in given:
            raise InputError(f"{_flag(k)} and --option {k}=... are both given")
    try:
        opts = split_options(args.defense, given, where=args.defense)
    except InputError as exc:
        raise InputError(f"--option: {exc}") from None
    if opts.certify and not getattr(args, "certifies", False):
        raise InputError(f"--option {', '.join(opts.certify)}: a certify setting of defense {args.defense!r}, "
                         "which this command does not call (`robustbench-iqa certify` takes it)")
    return opts


def build_defense(args: argparse.Namespace, model: IQAModel) -> CertifiedDefense:
    """The defense of ``--defense`` at its sigma (:func:`resolve_sigma`), with its trained artifact
    (``--checkpoint``, given to the keyword the defense names for it) and its ``--option`` values."""
    from robustbench_iqa.certify.defense import DEFENSES, create_defense
    from robustbench_iqa.certify.options import artifact_option
    from robustbench_iqa.registry import did_you_mean

    if args.defense not in DEFENSES:
        raise InputError(f"unknown defense {args.defense!r}{did_you_mean(args.defense, DEFENSES.names())}; "
                         f"known: {', '.join(DEFENSES.names())}")
    options: dict[str, Any] = dict(defense_options(args).build)
    if args.checkpoint is not None:
        key = artifact_option(args.defense)
        if key is None:
            raise InputError(f"--checkpoint given, but defense {args.defense!r} uses no trained artifact")
        from pathlib import Path

        given = Path(args.checkpoint).expanduser()
        if given.is_dir():
            raise InputError(f"--checkpoint {given} is a directory; give the checkpoint file itself")
        if given.exists() and not given.is_file():
            raise InputError(f"--checkpoint {given} is not a regular file")
        if given.is_file() and given.suffix == ".safetensors":
            from robustbench_iqa.models.weights import file_kind

            kind = file_kind(given)
            if kind != "safetensors":
                raise InputError(f"--checkpoint {given} is not a safetensors file ({kind})")
        if key in options:
            raise InputError(f"--checkpoint and --option {key}=... are both given")
        options[key] = args.checkpoint
    options.update({k: getattr(args, k) for k in FACTORY_OPTIONS if getattr(args, k, None) is not None})
    return create_defense(args.defense, model, sigma=resolve_sigma(args), **options)


def preflight(args: argparse.Namespace) -> None:
    """The defense's own check that a certification can succeed (e.g. enough draws for its percentile
    bounds), run before any model is built; defenses that declare none pass."""
    from robustbench_iqa.certify.defense import DEFENSES

    check = DEFENSES.metadata(args.defense).get("preflight") if args.defense in DEFENSES else None
    if check is not None:
        given = {k: getattr(args, k) for k in CERTIFY_SETTINGS if getattr(args, k, None) is not None}
        check(n=args.n, sigma=args.sigma, alpha=args.alpha, settings={**given, **defense_options(args).certify})


def _flag(setting: str) -> str:
    return "--no-lipschitz" if setting == "lipschitz" else "--" + setting.replace("_", "-")


def certify_settings(args: argparse.Namespace, defense: CertifiedDefense) -> dict[str, Any]:
    """The defense's own ``certify`` settings given on the command line; a flag the defense does not
    take is refused (``--tau`` means nothing to MS, ``--eps`` nothing to FS-IQA)."""
    import dataclasses

    from robustbench_iqa.certify.defense import settings_from

    given = {k: getattr(args, k) for k in CERTIFY_SETTINGS if getattr(args, k, None) is not None}
    taken = {f.name for f in dataclasses.fields(defense.certify_settings)}
    options = defense_options(args).certify
    for k in given:
        if k not in taken:
            flag = _flag(k)
            raise InputError(f"{flag} does not apply to defense {args.defense!r} (it takes: "
                             f"{', '.join(_flag(t) for t in sorted(taken) if t in CERTIFY_SETTINGS) or 'none'})")
    return {**settings_from(defense, given), **options}
