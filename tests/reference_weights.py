"""Deterministic weights and images for the fidelity fixtures (numpy only).

The official implementations that cannot be installed next to the suite (KonCept512's Keras
graph, HyperIQA's authors' code) are run once by ``scripts/fidelity/*.py`` on weights and images
generated here; their outputs are stored in ``tests/fixtures/*.json``.  The tests regenerate the
same weights and images from the same seeds, write them in the official checkpoint layout,
load them through the suite's converters and compare with the stored outputs.

Only numpy is imported, so the generator scripts run in environments without torch (TensorFlow).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np


def _rng(seed: int, key: str) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(key.encode())])


def keras_weight(layer: str, weight: str, shape: Sequence[int], *, seed: int) -> np.ndarray:
    """A float32 Keras weight ``layer/weight`` (``kernel``, ``bias``, ``gamma``, ``beta``,
    ``moving_mean``, ``moving_variance``) of ``shape``, scaled so a deep random net stays finite."""
    rng = _rng(seed, f"{layer}/{weight}")
    shape = tuple(int(s) for s in shape)
    if weight == "kernel":  # (kh, kw, in, out) or (in, out): He-normal on the fan-in
        fan_in = int(np.prod(shape[:-1]))
        w = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    elif weight == "bias":
        w = 0.05 * rng.standard_normal(shape)
    elif weight == "gamma":
        w = rng.uniform(0.8, 1.2, shape)
    elif weight == "beta":
        w = 0.1 * rng.standard_normal(shape)
    elif weight == "moving_mean":
        w = 0.1 * rng.standard_normal(shape)
    elif weight == "moving_variance":
        w = rng.uniform(0.5, 1.5, shape)
    else:
        raise ValueError(f"no recipe for Keras weight {weight!r}")
    return w.astype(np.float32)


def torch_weight(name: str, shape: Sequence[int], *, seed: int) -> np.ndarray:
    """A float32 PyTorch state-dict entry ``name`` of ``shape`` (conv/linear weights He-normal,
    biases small, BatchNorm weight ~1 and running variance in [0.5, 1.5])."""
    rng = _rng(seed, name)
    shape = tuple(int(s) for s in shape)
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return np.zeros(shape, dtype=np.int64)
    if leaf == "running_var":
        w = rng.uniform(0.5, 1.5, shape)
    elif leaf == "running_mean":
        w = 0.1 * rng.standard_normal(shape)
    elif leaf == "weight" and len(shape) == 1:  # a normalisation layer's scale
        w = rng.uniform(0.8, 1.2, shape)
    elif leaf == "weight":
        fan_in = int(np.prod(shape[1:]))
        w = rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)
    else:  # biases and anything else
        w = 0.05 * rng.standard_normal(shape)
    return w.astype(np.float32)


def images(seed: int, n: int, height: int, width: int) -> np.ndarray:
    """``n`` uint8 RGB images (n, H, W, 3): half smooth (bilinear blow-up of a coarse grid), half noise."""
    rng = _rng(seed, f"images-{n}-{height}-{width}")
    out = np.empty((n, height, width, 3), dtype=np.uint8)
    for i in range(n):
        if i % 2 == 0:
            coarse = rng.uniform(0, 255, (8, 8, 3))
            ys, xs = np.linspace(0, 7, height), np.linspace(0, 7, width)
            y0, x0 = np.floor(ys).astype(int).clip(0, 6), np.floor(xs).astype(int).clip(0, 6)
            fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
            top = coarse[y0][:, x0] * (1 - fx) + coarse[y0][:, x0 + 1] * fx
            bot = coarse[y0 + 1][:, x0] * (1 - fx) + coarse[y0 + 1][:, x0 + 1] * fx
            img = top * (1 - fy) + bot * fy + rng.normal(0, 8, (height, width, 3))
        else:
            img = rng.uniform(0, 255, (height, width, 3))
        out[i] = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return out
