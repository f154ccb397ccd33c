"""No file a user or a cache supplies is unpickled, including by third-party loaders the suite calls.

A payload (a pickle whose ``__reduce__`` calls ``exec``) is planted where pyiqa and
torchvision read their cached weights (``$TORCH_HOME/hub/pyiqa``, ``$TORCH_HOME/hub/checkpoints``),
and ``predict`` / ``weights check`` of lpips and dbcnn run with ``--weights pretrained``:
the payload never runs, and the command says why in one ``error:`` line (exit 2).
The payload is first shown to run when unpickled, so the test can fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustbench_iqa.errors import InputError
from robustbench_iqa.models.weights import building, no_unpickling


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (exec, (f"open({str(self.marker)!r}, 'a').write('payload ran\\n')",))


def plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"params": {"weight": torch.zeros(1)}, "evil": _Payload(marker)}, path)


def test_the_payload_is_real(tmp_path: Path) -> None:
    marker, f = tmp_path / "ran.txt", tmp_path / "evil.pth"
    plant(f, marker)
    torch.load(f, weights_only=False)  # what pyiqa and torch.hub do: the payload runs
    assert marker.read_text() == "payload ran\n"


def test_torch_load_is_refused_whatever_the_caller_asks(tmp_path: Path) -> None:
    marker, f = tmp_path / "ran.txt", tmp_path / "evil.pth"
    plant(f, marker)
    good = tmp_path / "good.pth"
    torch.save({"w": torch.arange(3.0)}, good)
    import torch.serialization as ser

    with no_unpickling():
        for load in (torch.load, ser.load):
            with pytest.raises(InputError, match="refused to read .*evil.pth.*never unpickles"):
                load(f, map_location="cpu", weights_only=False)
            with open(f, "rb") as fh, pytest.raises(InputError, match="evil.pth"):
                load(fh, weights_only=False)
        assert torch.equal(torch.load(good, weights_only=False)["w"], torch.arange(3.0))  # tensors still load
    assert not marker.exists()
    assert torch.load is ser.load and not hasattr(torch.load, "_weights_only_enforced")


def test_pyiqa_loader_refuses_its_own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pyiqa's ``load_pretrained_network`` (``weights_only=False``) on a planted cache file, as
    ``building`` runs it for dbcnn's SCNN and LPIPS's calibration files."""
    import pyiqa.utils.download_util as dl
    from pyiqa.archs import arch_util

    marker = tmp_path / "ran.txt"
    monkeypatch.setattr(dl, "DEFAULT_CACHE_DIR", str(tmp_path / "pyiqa"))
    plant(tmp_path / "pyiqa" / "DBCNN_scnn-7ea73d75.pth", marker)
    net = torch.nn.Linear(1, 1)
    with building("dbcnn", backbone=True, checkpoint=True), pytest.raises(InputError, match="DBCNN_scnn"):
        arch_util.load_pretrained_network(net, arch_util.get_url_from_name("DBCNN_scnn-7ea73d75.pth"))
    assert not marker.exists()
    # a genuine cached state dict still loads through the same path
    want = torch.nn.Linear(1, 1).state_dict()
    torch.save(want, tmp_path / "pyiqa" / "ok-0.pth")
    with building("dbcnn", backbone=True, checkpoint=True):
        arch_util.load_pretrained_network(net, arch_util.get_url_from_name("ok-0.pth"))
    assert torch.equal(net.weight, want["weight"])


@pytest.mark.slow
def test_planted_caches_never_run_for_the_cli(tmp_path: Path) -> None:
    """lpips: a genuine (random) AlexNet trunk in torchvision's cache, so that pyiqa reaches its own
    planted LPIPS file; dbcnn: the planted VGG-16 in torchvision's cache is met first."""
    import torchvision
    from pyiqa.archs.dbcnn_arch import default_model_urls as dbcnn_urls
    from pyiqa.archs.lpips_arch import default_model_urls as lpips_urls
    from torchvision.models import AlexNet_Weights, VGG16_Weights

    home, marker = tmp_path / "torch", tmp_path / "ran.txt"
    for url in [*lpips_urls.values(), *dbcnn_urls.values()]:
        plant(home / "hub" / "pyiqa" / url.rsplit("/", 1)[1], marker)
    vgg = home / "hub" / "checkpoints" / VGG16_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1]
    plant(vgg, marker)
    torch.save(torchvision.models.alexnet().state_dict(),
               home / "hub" / "checkpoints" / AlexNet_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[1])
    img = tmp_path / "x.png"
    Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)).save(img)
    env = {**os.environ, "TORCH_HOME": str(home), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    runs, names = {}, {"lpips": home / "hub" / "pyiqa" / "LPIPS_v0.1_alex-df73285e.pth", "dbcnn": vgg}
    for model in ("lpips", "dbcnn"):
        ref = ["--ref", str(img)] if model == "lpips" else []
        runs[("predict", model)] = ["predict", "--model", model, "--weights", "pretrained", "--defense", "none",
                                    "--image", str(img), *ref, "--no-progress"]
        runs[("weights", model)] = ["weights", "check", "--model", model, "--weights", "pretrained"]
    procs = {k: subprocess.Popen([sys.executable, "-m", "robustbench_iqa.cli", *argv], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env) for k, argv in runs.items()}
    for (cmd, model), p in procs.items():
        out, err = p.communicate(timeout=400)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert p.returncode == 2, (cmd, model, out, err)
        assert len(lines) == 1 and lines[0].startswith(f"error: refused to read {names[model]}:"), (cmd, err)
        assert "GLOBAL exec" in lines[0]
    assert not marker.exists(), marker.read_text()
