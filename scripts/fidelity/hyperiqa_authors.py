"""Run the authors' HyperIQA code on deterministic weights; write the fidelity fixture.

The authors' ``koniq_pretrained.pkl`` is a ``torch.save`` of the state dict of their
``models.HyperNet(16, 112, 224, 112, 56, 28, 14, 7)`` (github.com/SSL92/hyperIQA), a layout
pyiqa's checkpoint does not share.  This script imports their ``models.py`` (path given on the
command line), fills ``HyperNet`` with the deterministic weights of
``tests/reference_weights.torch_weight``, scores deterministic 224 x 224 patches with their
``HyperNet`` + ``TargetNet`` as in their ``demo.py`` (ImageNet normalisation), and writes
``tests/fixtures/hyperiqa_authors.json``: the state-dict layout (names and shapes) and the
scores.  ``tests/test_fidelity.py`` rebuilds the same ``.pkl``, loads it through the suite and
compares.  Nothing is downloaded (their ResNet-50 ImageNet initialisation is skipped).

    git clone https://github.com/SSL92/hyperIQA /tmp/hyperIQA
    python scripts/fidelity/hyperiqa_authors.py /tmp/hyperIQA/models.py
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import torch
import torch.utils.model_zoo

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from reference_weights import images, torch_weight  # noqa: E402

SEED = 0
CASES = [(11, 3)]  # (image seed, n) of 224 x 224 patches
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def main(models_py: str) -> None:
    spec = importlib.util.spec_from_file_location("hyperiqa_models", models_py)
    assert spec is not None and spec.loader is not None
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    models.model_zoo.load_url = lambda *a, **k: {}  # no ImageNet download; weights are set below
    net = models.HyperNet(16, 112, 224, 112, 56, 28, 14, 7).eval()
    state = {k: torch.from_numpy(torch_weight(k, v.shape, seed=SEED)) for k, v in net.state_dict().items()}
    net.load_state_dict(state)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    cases = []
    with torch.no_grad():
        for seed, n in CASES:
            x = torch.from_numpy(images(seed, n, 224, 224)).permute(0, 3, 1, 2).contiguous().float() / 255
            paras = net((x - mean) / std)
            target = models.TargetNet(paras).eval()
            scores = target(paras["target_in_vec"]).reshape(-1)
            cases.append({"seed": seed, "n": n, "height": 224, "width": 224,
                          "scores": [float(s) for s in scores],
                          "target_in_vec": paras["target_in_vec"].reshape(n, -1).double().tolist()})
            print(f"{n} patches: {scores}")
    out = {"what": "HyperIQA, authors' models.HyperNet(16, 112, 224, 112, 56, 28, 14, 7) + TargetNet",
           "weights_seed": SEED, "versions": {"torch": torch.__version__},
           "layout": [[k, list(v.shape)] for k, v in net.state_dict().items()], "cases": cases}
    dest = ROOT / "tests" / "fixtures" / "hyperiqa_authors.json"
    dest.write_text(json.dumps(out, separators=(",", ":")))
    print(f"wrote {dest} ({dest.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1])
