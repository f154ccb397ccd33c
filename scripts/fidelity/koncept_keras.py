"""Run the official KonCept512 Keras graph on deterministic weights; write the fidelity fixture.

KonCept512's published weights are a Keras ``.h5`` file.  This script builds the official graph
(``koncept.models.Koncept512.create_model``, from the ``koncept``/``kuti`` packages, without
downloading weights), fills it with the deterministic weights of
``tests/reference_weights.keras_weight``, runs it on deterministic images and writes
``tests/fixtures/koncept_keras.json``: the ``.h5`` layout (layer order, weight names and shapes)
and the scores and pooled features.  ``tests/test_fidelity.py`` rebuilds the same ``.h5`` with
h5py, converts it with the suite's converter and compares, without TensorFlow.

Needs an environment with TensorFlow and the legacy Keras 2 (``tf_keras``), e.g.::

    python -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu tf_keras h5py \
        future munch scikit-learn scikit-image matplotlib pandas
    /tmp/tfenv/bin/pip install --no-deps koncept kuti
    TF_USE_LEGACY_KERAS=1 /tmp/tfenv/bin/python scripts/fidelity/koncept_keras.py
"""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
from reference_weights import images, keras_weight  # noqa: E402

SEED = 0
CASES = [(1, 2, 384, 512), (2, 1, 299, 299), (3, 1, 256, 320)]  # (image seed, n, H, W)


def main() -> None:
    import tensorflow as tf
    import tf_keras

    # kuti imports a helper that TensorFlow removed in 2.4; it is not used to build the graph.
    stub = types.ModuleType("tensorflow.python.keras.utils.multi_gpu_utils")
    stub.multi_gpu_model = None  # type: ignore[attr-defined]
    sys.modules["tensorflow.python.keras.utils.multi_gpu_utils"] = stub
    import koncept
    from koncept.models import Koncept512
    from kuti import applications as apps

    class Offline(Koncept512):
        def load_weights(self, *args: object, **kwargs: object) -> None:  # no download
            return None

    k = Offline(verbose=0)
    model = k.model
    layout = []
    for layer in model.layers:
        names = [w.name.split("/")[-1].split(":")[0] for w in layer.weights]
        if not names:
            continue
        values = [keras_weight(layer.name, n, w.shape, seed=SEED) for n, w in zip(names, layer.weights)]
        layer.set_weights(values)
        layout.append([layer.name, [[n, list(map(int, w.shape))] for n, w in zip(names, layer.weights)]])
    features_model = apps.Model(inputs=model.inputs, outputs=model.get_layer("final_gap").output)
    cases = []
    for seed, n, h, w in CASES:
        batch = np.stack([k.preprocess_fn(im.astype(np.float32)) for im in images(seed, n, h, w)])
        scores = model.predict(batch, verbose=0).reshape(-1)
        feats = features_model.predict(batch, verbose=0)
        cases.append({"seed": seed, "n": n, "height": h, "width": w,
                      "scores": [float(s) for s in scores], "features": feats.astype(float).tolist()})
        print(f"{n}x{h}x{w}: scores {scores}")
    out = {
        "what": "KonCept512 (koncept.models.Koncept512.create_model) on reference_weights.keras_weight",
        "weights_seed": SEED,
        "versions": {"tensorflow": tf.__version__, "keras": tf_keras.__version__,
                     "koncept": getattr(koncept, "__version__", "0.2.2")},
        "h5_attrs": {"keras_version": tf_keras.__version__, "backend": "tensorflow"},
        "layout": layout,
        "cases": cases,
    }
    dest = ROOT / "tests" / "fixtures" / "koncept_keras.json"
    dest.write_text(json.dumps(out, separators=(",", ":")))
    print(f"wrote {dest} ({dest.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
