"""The study jobs of a run: each computes rows and writes them to the results store.

Rows are written as soon as they exist, one image (or one attack batch) per
transaction, and keys already in the store are skipped, so a killed run resumes
where it stopped without losing or duplicating a row (:mod:`robustbench_iqa.store`).
Row payloads follow the columns documented in :mod:`robustbench_iqa.analysis.studies`.

- :func:`certify_and_audit`: per image, the certificate (``guarantee`` rows),
  the undefended and defended scores with timings (``correlation`` rows) and
  the audit of the certificate under attack (``audit`` rows);
- :func:`accuracy_seeds`: the defended predictions again under further seeds;
- :func:`stability`: repeated predictions with different seeds, per n;
- :func:`beyond`: I-FGSM (L2) at norms beyond the certificate, undefended and defended.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import torch
from tqdm.auto import tqdm

from robustbench_iqa.attacks.eot import Aggregate, NoiseMode, eot_objective
from robustbench_iqa.attacks.gradient import IFGSM
from robustbench_iqa.attacks.objective import Objective, Target
from robustbench_iqa.certify.defense import CertifiedDefense
from robustbench_iqa.models import IQAModel
from robustbench_iqa.runner.audit_job import audit_image, certify_image
from robustbench_iqa.runner.config import VerifyConfig
from robustbench_iqa.runner.context import Image, auditable, chunks, generator
from robustbench_iqa.store import ResultsStore, RowKey


def certify_and_audit(
    store: ResultsStore, cfg: VerifyConfig, model: IQAModel, defense_name: str,
    defense: CertifiedDefense, images: list[Image], *, progress: bool = True,
) -> None:
    """``guarantee``, ``correlation`` and ``audit`` rows of every image (one transaction each)."""
    m, s = model.name, float(cfg.sigma_value)
    todo = [im for im in images if not store.done(RowKey("guarantee", m, defense_name, s, im.name))]
    if todo:  # warm-up (lazy initialization, allocator) so that the first image's timings are not inflated
        with torch.no_grad():
            model(todo[0].x, todo[0].ref)
            defense.predict(todo[0].x, todo[0].ref, n=min(cfg.n, 100), generator=generator(cfg, "warm-up"))
    for img in tqdm(todo, desc=f"certify+audit {m} ({defense_name})", unit="img", disable=not progress):
        rows: list[tuple[RowKey, Mapping[str, Any]]] = []
        with torch.no_grad():
            t0 = time.perf_counter()
            clean = float(model(img.x, img.ref).reshape(-1)[0])
            t_model = time.perf_counter() - t0
            t0 = time.perf_counter()
            pred = float(defense.predict(img.x, img.ref, n=cfg.n, generator=generator(
                cfg, "predict", m, defense_name, img.name)).reshape(-1)[0])
            t_predict = time.perf_counter() - t0
        cert, t_certify, est = certify_image(cfg, defense_name, defense, img, m)
        rows.append((RowKey("correlation", m, "none", 0.0, img.name),
                     {"score": clean, "target": img.target, "seconds_predict": t_model,
                      "lower_better": bool(model.lower_better)}))
        rows.append((RowKey("correlation", m, defense_name, s, img.name),
                     {"score": pred, "target": img.target, "seconds_predict": t_predict,
                      "seconds_certify": t_certify, "lower_better": bool(defense.lower_better),
                      "seed": cfg.seed}))
        rows.append((RowKey("guarantee", m, defense_name, s, img.name),
                     {"eps_x": cert.eps_x, "lower": cert.lower, "upper": cert.upper, "score": cert.score,
                      "abstained": cert.abstained, "spectral_norm": cert.spectral_norm,
                      "reason": cert.reason.value if cert.reason else None}))
        if auditable(cert.guarantee):
            rows.append((RowKey("audit", m, defense_name, s, img.name),
                         audit_image(cfg, defense_name, defense, img, m, cert, est)))
        store.put_many(rows)


def accuracy_seeds(
    store: ResultsStore, cfg: VerifyConfig, model: IQAModel, defense_name: str,
    defense: CertifiedDefense, images: list[Image], *, progress: bool = True,
) -> None:
    """``correlation`` rows of the defended prediction under each of ``cfg.accuracy_seeds``."""
    m, s = model.name, float(cfg.sigma_value)
    seeds = [k for k in cfg.accuracy_seeds if k != cfg.seed]
    for k in tqdm(seeds, desc=f"accuracy seeds {m} ({defense_name})", unit="seed", disable=not progress):
        rows: list[tuple[RowKey, Mapping[str, Any]]] = []
        for img in images:
            key = RowKey("correlation", m, defense_name, s, img.name, f"seed={k}")
            if store.done(key):
                continue
            gen = generator(dataclasses.replace(cfg, seed=k), "predict", m, defense_name, img.name)
            with torch.no_grad():
                pred = float(defense.predict(img.x, img.ref, n=cfg.n, generator=gen).reshape(-1)[0])
            rows.append((key, {"score": pred, "target": img.target, "lower_better": bool(defense.lower_better),
                               "seed": k}))
        store.put_many(rows)


def stability(
    store: ResultsStore, cfg: VerifyConfig, model: IQAModel, defense_name: str,
    defense: CertifiedDefense, images: list[Image], *, progress: bool = True,
) -> None:
    """``stability`` rows: ``stability_repeats`` predictions per image and n, each with its own seed."""
    m, s = model.name, float(cfg.sigma_value)
    imgs = images[: cfg.stability_limit]
    units = [(img, int(n)) for img in imgs for n in cfg.stability_n]
    for img, n in tqdm(units, desc=f"stability {m} ({defense_name})", unit="case", disable=not progress):
        rows: list[tuple[RowKey, Mapping[str, Any]]] = []
        for r in range(cfg.stability_repeats):
            key = RowKey("stability", m, defense_name, s, img.name, f"n={n},seed={r}")
            if store.done(key):
                continue
            gen = generator(cfg, "stability", m, defense_name, img.name, n, r)
            with torch.no_grad():
                score = float(defense.predict(img.x, img.ref, n=n, generator=gen).reshape(-1)[0])
            rows.append((key, {"n": n, "seed": r, "score": score}))
        store.put_many(rows)


def beyond(
    store: ResultsStore, cfg: VerifyConfig, model: IQAModel, defense_name: str,
    defense: CertifiedDefense, images: list[Image], *, progress: bool = True,
) -> None:
    """``beyond`` rows: I-FGSM (L2, ``attack_steps`` steps) raising quality, per norm, per image.

    The undefended model is attacked through its own gradient; the defense through
    EOT (mean of ``eot`` draws, fresh noise) and scored with ``n`` draws.
    """
    m, s = model.name, float(cfg.sigma_value)
    imgs = images[: cfg.beyond_limit]
    cases = [(d, norm) for d in ("none", defense_name) for norm in cfg.beyond_norms]
    for d, norm in tqdm(cases, desc=f"beyond {m} ({defense_name})", unit="norm", disable=not progress):
        sig = 0.0 if d == "none" else s
        extra = f"l2={norm:g}"
        todo = [im for im in imgs if not store.done(RowKey("beyond", m, d, sig, im.name, extra))]
        for batch in chunks(todo, 4):
            x = torch.cat([im.x for im in batch])
            ref = torch.cat([im.ref for im in batch]) if batch[0].ref is not None else None  # type: ignore[misc]
            gen = generator(cfg, "beyond", m, d, norm, batch[0].name)
            if d == "none":
                obj = Objective.from_model(model, target=Target.INCREASE)
            else:
                obj = eot_objective(defense, n=cfg.eot, aggregate=Aggregate.MEAN, noise=NoiseMode.FRESH,
                                    generator=gen, target=Target.INCREASE, eval_n=cfg.n, eval_seed=cfg.seed)
            res = IFGSM(eps=float(norm), steps=cfg.attack_steps, norm="l2").run(obj, x, ref, generator=gen)
            store.put_many([
                (RowKey("beyond", m, d, sig, im.name, extra),
                 {"norm": float(norm), "clean": r.clean_score, "adv": r.adv_score, "l2": r.l2,
                  "lower_better": bool(obj.lower_better)})
                for im, r in zip(batch, res.records)
            ])
