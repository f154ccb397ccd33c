"""Reading Keras 2 ``.h5`` weight files with h5py (no TensorFlow).

Keras 2 writes a model's weights (``model.save_weights`` or the ``model_weights`` group of
``model.save``) as one HDF5 group per layer, listed in order in the attribute ``layer_names``;
each layer group lists its weights in ``weight_names`` (``"conv2d_5/kernel:0"``), stored as
datasets under those names.  A nested model is one layer group whose weight names carry the
inner layers' names; they are unpacked here.  Layouts: convolution kernels ``(kh, kw, in, out)``,
dense kernels ``(in, out)``; BatchNormalization ``gamma`` (absent with ``scale=False``),
``beta``, ``moving_mean``, ``moving_variance``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robustbench_iqa.errors import InputError


@dataclass(frozen=True)
class KerasLayer:
    """One Keras layer with weights: its name and ``{short weight name: array}`` in file order."""

    name: str
    weights: dict[str, np.ndarray]


def _text(v: object) -> str:
    return v.decode("utf8") if isinstance(v, bytes) else str(v)


def read_keras_h5(path: str | Path) -> tuple[list[KerasLayer], dict[str, str]]:
    """The layers with weights of a Keras 2 ``.h5`` file, in file order, and the file's
    ``keras_version``/``backend`` attributes."""
    try:
        import h5py
    except ImportError:
        raise InputError("reading a Keras .h5 file needs h5py: pip install h5py") from None
    p = Path(path)
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise InputError(f"cannot read {p} as HDF5: {str(exc).splitlines()[0]}") from None
    with f:
        group = f["model_weights"] if "model_weights" in f else f
        attrs = {k: _text(group.attrs.get(k, f.attrs.get(k, ""))) for k in ("keras_version", "backend")}
        if "layer_names" not in group.attrs:
            raise InputError(f"{p} is not a Keras weights file (no 'layer_names' attribute; "
                             f"top-level groups: {list(group)[:5]})")
        layers: dict[str, dict[str, np.ndarray]] = {}
        for lname in (_text(n) for n in group.attrs["layer_names"]):
            g = group[lname]
            for wname in (_text(n) for n in g.attrs.get("weight_names", [])):
                owner = wname.rsplit("/", 1)[0].split("/")[-1] if "/" in wname else lname
                short = wname.rsplit("/", 1)[-1].split(":")[0]
                layers.setdefault(owner, {})[short] = np.asarray(g[wname])
    if not layers:
        raise InputError(f"{p} holds no Keras layer weights")
    return [KerasLayer(n, w) for n, w in layers.items()], attrs
